import numpy as np

from broker.placement.base import HostCandidate, HostFilter, PlacementRequest
from broker.placement.table import HostTable


class DesktopKindFilter(HostFilter):
    """Session and app pools go to session hosts, VM pools to hosts that run VMs: each kind of host starts
    only its own kind of desktop (a session host has no images, a hypervisor no user sessions)."""

    name = "desktop_kind"
    reason = "runs the other kind of desktop (VMs or user sessions)"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.runs_sessions == request.sessions

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        # A host's provider changes only with the inventory: the answer is kept per kind of request.
        return table.mask(("desktop_kind", request.sessions), lambda host: self.host_passes(host, request))
