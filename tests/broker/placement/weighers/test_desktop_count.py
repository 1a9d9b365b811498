"""The desktop_count weigher: fewer desktops weigh more."""

from broker.placement.weighers.desktop_count import DesktopCountWeigher
from tests.fixtures.placement import host, raw


def test_desktop_count_prefers_fewer_desktops():
    assert raw(DesktopCountWeigher(), [host("a", desktops=3), host("b", desktops=1)]) == [-3.0, -1.0]
