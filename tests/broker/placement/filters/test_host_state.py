"""The host_state filter: only hosts that are up and enabled take new desktops."""

from broker.placement.filters.host_state import HostStateFilter
from tests.fixtures.placement import both_ways, host


def test_host_state_needs_up_and_enabled():
    hosts = [
        host("ok"),
        host("down", state="down"),
        host("draining", admin_state="draining"),
        host("disabled", admin_state="disabled"),
    ]
    assert both_ways(HostStateFilter(), hosts) == ["ok"]
