from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest


class CpuLoadWeigher(HostWeigher):
    """A lower CPU load (last reported by the host's stats, 0 if none yet) weighs more."""

    name = "cpu_load"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return -(host.cpu_load or 0.0)

    def weigh_all(self, hosts: list[HostCandidate], request: PlacementRequest) -> list[float]:
        return [-(host.cpu_load or 0.0) for host in hosts]
