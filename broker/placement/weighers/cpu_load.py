import numpy as np

from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest
from broker.placement.table import HostTable


class CpuLoadWeigher(HostWeigher):
    """A lower CPU load (last reported by the host's stats, 0 if none yet) weighs more."""

    name = "cpu_load"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return -(host.cpu_load or 0.0)

    def weigh_array(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        return -table.cpu_load
