from broker.placement.base import HostCandidate, HostFilter, PlacementRequest


class HostStateFilter(HostFilter):
    """Only hosts that are up take new desktops (not down, disabled or draining)."""

    name = "host_state"
    reason = "not up"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.state == "up"
