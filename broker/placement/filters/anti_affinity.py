import numpy as np

from broker.placement.base import HostCandidate, HostFilter, PlacementRequest
from broker.placement.table import HostTable


class PoolAntiAffinityFilter(HostFilter):
    """At most `max_per_host` desktops of one pool per host, so one host failing hurts a pool less."""

    name = "anti_affinity"
    reason = "already holding max_per_host desktops of the pool"

    def applies(self, request: PlacementRequest) -> bool:
        return request.max_per_host is not None

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        if request.max_per_host is None:
            return True
        return host.pool_desktops.get(request.pool, 0) < request.max_per_host

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        if request.max_per_host is None:
            return np.ones(len(table), dtype=bool)
        return table.pool_desktops(request.pool) < request.max_per_host
