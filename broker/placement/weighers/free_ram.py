import numpy as np

from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest
from broker.placement.table import HostTable


class FreeRamWeigher(HostWeigher):
    """More free RAM (physical × ratio − used) weighs more; hosts of unknown size count as 0."""

    name = "free_ram"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return host.free_memory_mib

    def weigh_array(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        return table.free_memory
