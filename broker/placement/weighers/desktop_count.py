from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest


class DesktopCountWeigher(HostWeigher):
    """Fewer desktops weigh more: spreads with a positive multiplier, packs with a negative one."""

    name = "desktop_count"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return -float(host.desktops)

    def weigh_all(self, hosts: list[HostCandidate], request: PlacementRequest) -> list[float]:
        return [-float(host.desktops) for host in hosts]
