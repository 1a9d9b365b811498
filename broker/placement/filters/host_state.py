from broker.placement.base import HostCandidate, HostFilter, PlacementRequest


class HostStateFilter(HostFilter):
    """Only hosts that are up and enabled take new desktops; draining and disabled ones keep theirs."""

    name = "host_state"
    reason = "down, disabled or draining"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.state == "up" and host.admin_state == "enabled"

    def filter_all(self, hosts: list[HostCandidate], request: PlacementRequest) -> list[HostCandidate]:
        return [host for host in hosts if host.state == "up" and host.admin_state == "enabled"]
