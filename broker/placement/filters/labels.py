import numpy as np

from broker.placement.base import HostCandidate, HostFilter, PlacementRequest
from broker.placement.table import HostTable


class LabelAffinityFilter(HostFilter):
    """The pool's zone, site and required labels must all match the host's labels."""

    name = "labels"
    reason = "outside the pool's zone, site or labels"

    def applies(self, request: PlacementRequest) -> bool:
        return bool(request.zone or request.site or request.required_labels)

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        labels = host.labels
        if request.zone is not None and labels.get("zone") != request.zone:
            return False
        if request.site is not None and labels.get("site") != request.site:
            return False
        return all(labels.get(key) == value for key, value in request.required_labels)

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        # Labels change only with the inventory, so the answer is kept per (zone, site, labels).
        key = ("labels", request.zone, request.site, request.required_labels)
        return table.mask(key, lambda host: self.host_passes(host, request))
