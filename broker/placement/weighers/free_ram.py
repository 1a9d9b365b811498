from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest


class FreeRamWeigher(HostWeigher):
    """More free RAM (physical × ratio − used) weighs more; hosts of unknown size count as 0."""

    name = "free_ram"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return host.free_memory_mib

    def weigh_all(self, hosts: list[HostCandidate], request: PlacementRequest) -> list[float]:
        return [host.free_memory_mib for host in hosts]
