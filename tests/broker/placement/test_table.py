"""The host table: what filters and weighers read, over arrays, kept current as hosts change."""

from broker.placement.base import PlacementRequest
from broker.placement.filters.anti_affinity import PoolAntiAffinityFilter
from broker.placement.filters.labels import LabelAffinityFilter
from broker.placement.table import HostTable
from broker.placement.weighers.image_cached import ImageCachedWeigher
from tests.fixtures.placement import host


def test_table_keeps_cached_answers_current_when_a_host_changes():
    """Labels, images and per-pool counts are cached per request; a changed host updates them."""
    table = HostTable([host("a", labels={"zone": "business"}), host("b", pool_desktops={"p": 1})])
    zoned = PlacementRequest(pool="p", zone="business", max_per_host=1, image="demo:v1")
    assert LabelAffinityFilter().mask(table, zoned).tolist() == [True, False]
    assert PoolAntiAffinityFilter().mask(table, zoned).tolist() == [True, False]
    assert ImageCachedWeigher().weigh_array(table, zoned).tolist() == [0.0, 0.0]

    table.put(host("a", labels={"zone": "internet"}, pool_desktops={"p": 1}, images=frozenset({"demo:v1"})))
    table.put(host("b", labels={"zone": "business"}))

    assert LabelAffinityFilter().mask(table, zoned).tolist() == [False, True]
    assert PoolAntiAffinityFilter().mask(table, zoned).tolist() == [False, True]
    assert ImageCachedWeigher().weigh_array(table, zoned).tolist() == [1.0, 0.0]
