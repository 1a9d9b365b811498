"""The network zone filter: a pool's desktops never go on a host of the other network zone."""

import random

import pytest
from pydantic import ValidationError

from broker.placement import PlacementEngine
from broker.placement.base import PlacementRequest
from broker.placement.config import PlacementSettings
from broker.placement.filters.network_zone import NetworkZoneFilter
from tests.fixtures.placement import both_ways, host

HOSTS = [
    host("business", labels={"zone": "business"}),
    host("internet", labels={"zone": "internet"}),
    host("unlabelled"),
]


def test_a_host_without_a_zone_label_is_business():
    business = PlacementRequest(pool="p")
    internet = PlacementRequest(pool="p", network_zone="internet")
    assert both_ways(NetworkZoneFilter(), HOSTS, business) == ["business", "unlabelled"]
    assert both_ways(NetworkZoneFilter(), HOSTS, internet) == ["internet"]


def test_a_business_pool_is_never_placed_on_an_internet_host_even_when_only_it_has_room():
    hosts = [host("b1", labels={"zone": "business"}, desktops=10), host("i1", labels={"zone": "internet"})]
    engine = PlacementEngine.from_settings(PlacementSettings(), rng=random.Random(1))
    decision = engine.select(hosts, PlacementRequest(pool="mois-office"))
    assert decision.host is None
    assert "1 host in another network zone" in decision.reason
    assert engine.select(hosts, PlacementRequest(pool="public-web", network_zone="internet")).host == "i1"


def test_placement_settings_cannot_leave_the_zone_filter_out():
    with pytest.raises(ValidationError, match="'network_zone' must stay in the list"):
        PlacementSettings(filters=["host_state", "capacity"])
