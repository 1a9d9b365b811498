import numpy as np

from broker.placement.base import HostCandidate, HostFilter, PlacementRequest
from broker.placement.table import HostTable


class HostStateFilter(HostFilter):
    """Only hosts that are up and enabled take new desktops; draining and disabled ones keep theirs."""

    name = "host_state"
    reason = "down, disabled or draining"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.state == "up" and host.admin_state == "enabled"

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        return table.usable
