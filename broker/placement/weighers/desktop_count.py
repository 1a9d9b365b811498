import numpy as np

from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest
from broker.placement.table import HostTable


class DesktopCountWeigher(HostWeigher):
    """Fewer desktops weigh more: spreads with a positive multiplier, packs with a negative one."""

    name = "desktop_count"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return -float(host.desktops)

    def weigh_array(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        return -table.desktops.astype(np.float64)
