from broker.placement.base import HostCandidate, HostFilter, PlacementRequest


class DesktopCapacityFilter(HostFilter):
    """A host holds at most `max_desktops` desktops."""

    name = "capacity"
    reason = "full"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.free_slots > 0
