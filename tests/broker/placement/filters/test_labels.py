"""The labels filter: the pool's zone, site and required labels must match the host's."""

from broker.placement.base import PlacementRequest
from broker.placement.filters.labels import LabelAffinityFilter
from tests.fixtures.placement import REQUEST, both_ways, host


def test_labels_match_zone_site_and_required_labels():
    request = PlacementRequest(pool="p", zone="business", site="sejong", required_labels=(("gpu", "true"),))
    hosts = [
        host("match", labels={"zone": "business", "site": "sejong", "gpu": "true"}),
        host("other-zone", labels={"zone": "internet", "site": "sejong", "gpu": "true"}),
        host("no-gpu", labels={"zone": "business", "site": "sejong"}),
        host("unlabelled"),
    ]
    assert both_ways(LabelAffinityFilter(), hosts, request) == ["match"]
    assert not LabelAffinityFilter().applies(REQUEST)
