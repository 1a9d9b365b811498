"""The network zone filter: a desktop goes only on a host of its pool's network zone (망분리).

A host's zone is its `zone` label; a host without one is in the business zone, like a pool without one.
So a business pool never lands on an internet-zone host and an internet pool never on a business one,
whatever the pool's other labels say. `[placement] filters` cannot leave this filter out.
"""

import numpy as np

from broker.placement.base import HostCandidate, HostFilter, PlacementRequest
from broker.placement.table import HostTable

DEFAULT_ZONE = "business"


def host_zone(host: HostCandidate) -> str:
    return host.labels.get("zone") or DEFAULT_ZONE


class NetworkZoneFilter(HostFilter):
    name = "network_zone"
    reason = "in another network zone"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host_zone(host) == request.network_zone

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        # Zones change only with the inventory, so the answer is kept per zone.
        return table.mask(
            ("network_zone", request.network_zone), lambda host: self.host_passes(host, request)
        )
