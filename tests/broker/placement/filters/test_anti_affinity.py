"""The anti_affinity filter: at most max_per_host desktops of one pool per host."""

from broker.placement.base import PlacementRequest
from broker.placement.filters.anti_affinity import PoolAntiAffinityFilter
from tests.fixtures.placement import REQUEST, both_ways, host


def test_anti_affinity_caps_desktops_of_one_pool_per_host():
    request = PlacementRequest(pool="p", max_per_host=2)
    hosts = [host("two", pool_desktops={"p": 2}), host("one", pool_desktops={"p": 1, "q": 5})]
    assert both_ways(PoolAntiAffinityFilter(), hosts, request) == ["one"]
    assert not PoolAntiAffinityFilter().applies(REQUEST)
