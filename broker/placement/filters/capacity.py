import numpy as np

from broker.placement.base import HostCandidate, HostFilter, PlacementRequest
from broker.placement.table import HostTable


class DesktopCapacityFilter(HostFilter):
    """Room for one more desktop: `max_desktops`, and vCPU and RAM within physical × overcommit ratio.

    A host whose physical size is unknown (no override, not reported) is limited by `max_desktops` only.
    """

    name = "capacity"
    reason = "full"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.fits(request.vcpus, request.memory_mib)

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        # host.fits over arrays; an unknown size is an infinite limit in the table.
        return (
            (table.desktops < table.max_desktops)
            & (table.vcpus_used + request.vcpus <= table.vcpu_limit)
            & (table.memory_used + request.memory_mib <= table.memory_limit)
        )
