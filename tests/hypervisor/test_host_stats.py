"""Host statistics and connection health from the real libvirtd, directly and through a relay we can kill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hypervisor.base import HostUnreachable
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider
from tests.fixtures.common import wait_until
from tests.fixtures.libvirt_relay import UnixRelay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[UnixRelay]:
    relay = UnixRelay(tmp_path / "libvirt-relay.sock")
    yield relay
    relay.stop()


@pytest.fixture
def relayed_driver(libvirt_host: HostSettings, relay: UnixRelay) -> Iterator[LibvirtProvider]:
    host = libvirt_host.model_copy(
        update={"name": "relayed", "uri": f"qemu+unix:///system?socket={relay.path}"}
    )
    driver = LibvirtProvider(host)
    yield driver
    driver.close()


def test_host_stats_report_memory_load_and_running_desktops(libvirt_driver: LibvirtProvider) -> None:
    first = libvirt_driver.host_stats()
    assert first.free_memory_mib > 0
    assert first.running_desktops >= 0
    assert first.cpu_load is None  # load needs two samples of the CPU time counters
    second = wait_until(
        lambda: (stats := libvirt_driver.host_stats()).cpu_load is not None and stats, 10, "a CPU load sample"
    )
    assert 0.0 <= second.cpu_load <= 1.0


def test_close_callback_marks_the_connection_dead_when_the_host_goes_away(
    relayed_driver: LibvirtProvider, relay: UnixRelay
) -> None:
    relayed_driver.host_stats()
    assert relayed_driver.is_connected()
    relay.stop()
    wait_until(lambda: not relayed_driver.is_connected(), 20, "the close callback")
    with pytest.raises(HostUnreachable, match="host relayed"):
        relayed_driver.host_stats()


def test_keepalive_closes_the_connection_to_a_host_that_hangs(
    relayed_driver: LibvirtProvider, relay: UnixRelay
) -> None:
    relayed_driver.host_stats()
    relay.freeze()
    # Keepalive every 2 s, 3 missed answers: about 8 s; the deadline leaves room for a busy machine.
    wait_until(lambda: not relayed_driver.is_connected(), 30, "the keepalive to close the connection")
