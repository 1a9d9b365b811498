"""The image_cached weigher: a host holding the pool's image version weighs more."""

from broker.placement.base import PlacementRequest
from broker.placement.table import HostTable
from broker.placement.weighers.image_cached import ImageCachedWeigher
from tests.fixtures.placement import host, raw


def test_image_cached_prefers_hosts_holding_the_image_version():
    hosts = [host("has", images=frozenset({"demo:v1"})), host("old", images=frozenset({"demo:v0"}))]
    assert raw(ImageCachedWeigher(), hosts) == [1.0, 0.0]


def test_a_pool_without_an_image_weighs_every_host_alike():
    hosts = [host("has", images=frozenset({"demo:v1"})), host("none")]
    no_image = PlacementRequest(pool="p")
    assert ImageCachedWeigher().weigh_array(HostTable(hosts), no_image).tolist() == [0.0, 0.0]
    assert [ImageCachedWeigher().weigh(h, no_image) for h in hosts] == [0.0, 0.0]
