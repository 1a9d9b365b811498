"""The desktop_kind filter: session and app pools go to session hosts, VM pools to the others."""

from broker.placement.base import PlacementRequest
from broker.placement.claim import runs_sessions
from broker.placement.filters.desktop_kind import DesktopKindFilter
from tests.fixtures.placement import both_ways, host

HOSTS = [host("hv1"), host("sh1", runs_sessions=True), host("hv2"), host("sh2", runs_sessions=True)]


def test_session_pools_go_to_session_hosts_and_vm_pools_to_the_others():
    assert both_ways(DesktopKindFilter(), HOSTS, PlacementRequest(pool="sbc", sessions=True)) == [
        "sh1",
        "sh2",
    ]
    assert both_ways(DesktopKindFilter(), HOSTS, PlacementRequest(pool="office")) == ["hv1", "hv2"]


def test_a_hosts_kind_comes_from_its_provider(toy_provider):
    assert runs_sessions("session-host") is True
    assert runs_sessions("libvirt") is False
    assert runs_sessions("toy") is False  # tests' toy provider: no image, but desktops of their own
    assert runs_sessions("no-such-provider") is False
