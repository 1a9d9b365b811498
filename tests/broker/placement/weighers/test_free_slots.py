"""The free_slots weigher: more free desktop slots weigh more."""

from broker.placement.weighers.free_slots import FreeSlotsWeigher
from tests.fixtures.placement import host, raw


def test_free_slots_weighs_room_left():
    hosts = [host("a", max_desktops=10, desktops=4), host("over", max_desktops=2, desktops=3)]
    assert raw(FreeSlotsWeigher(), hosts) == [6.0, 0.0]
