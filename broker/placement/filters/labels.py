from broker.placement.base import HostCandidate, HostFilter, PlacementRequest


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
