from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest


class FreeSlotsWeigher(HostWeigher):
    """More free desktop slots weigh more: spreads with a positive multiplier, packs with a negative one."""

    name = "free_slots"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return float(host.free_slots)
