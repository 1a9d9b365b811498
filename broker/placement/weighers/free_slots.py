import numpy as np

from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest
from broker.placement.table import HostTable


class FreeSlotsWeigher(HostWeigher):
    """More free desktop slots weigh more: spreads with a positive multiplier, packs with a negative one."""

    name = "free_slots"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return float(host.free_slots)

    def weigh_array(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        return np.maximum(table.max_desktops - table.desktops, 0).astype(np.float64)
