"""Power actions of the libvirt driver on a real QEMU guest: stop, start and suspend keep the desktop's disk.

The demo guest counts its boots in a file on its own disk (images/demo_init.sh) and prints the count on
its serial console, so "the writes survived" is what the guest itself reports.
"""

from __future__ import annotations

import libvirt
import pytest

from hypervisor.base import BootImage, DesktopNotFound, DesktopSpec, HypervisorError
from tests.fixtures.libvirt import wait_for_console

# The demo guest powers off when the ACPI power button is pressed; a forced power-off is logged as a warning.
SHUTDOWN_TIMEOUT_S = 60


def overlay_of(host, name: str) -> tuple[str, int]:
    """Path and allocation of the desktop's overlay volume."""
    conn = libvirt.open(host.uri)
    try:
        volume = conn.storagePoolLookupByName(host.storage_pool).storageVolLookupByName(name + ".qcow2")
        return volume.path(), volume.info()[2]
    finally:
        conn.close()


def run_reason(host, name: str) -> int:
    conn = libvirt.open(host.uri)
    try:
        state, reason = conn.lookupByName(name).state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        return reason
    finally:
        conn.close()


def test_stopped_desktop_starts_again_from_its_own_disk(
    libvirt_driver, libvirt_host, demo_image, desktop_name, caplog
):
    name = desktop_name()
    first = libvirt_driver.create_desktop(DesktopSpec(domain_name=name, image=BootImage.of(demo_image)))
    wait_for_console(libvirt_driver, name, "boots=1 ")
    overlay_path, _ = overlay_of(libvirt_host, name)

    libvirt_driver.stop_desktop(name, SHUTDOWN_TIMEOUT_S)
    assert libvirt_driver.desktop_state(name) == "shutoff"
    # The guest shut itself down at the power button, rather than being powered off at the deadline.
    assert "power button pressed: shutting down" in libvirt_driver.console_log(name)
    assert "did not shut down" not in caplog.text
    assert name in libvirt_driver.list_desktops()  # still defined: the domain is persistent
    libvirt_driver.stop_desktop(name, SHUTDOWN_TIMEOUT_S)  # stopping a stopped desktop is harmless

    again = libvirt_driver.start_desktop(name)

    assert libvirt_driver.desktop_state(name) == "running"
    assert again.host == first.host
    wait_for_console(libvirt_driver, name, "boots=2 ")
    assert overlay_of(libvirt_host, name)[0] == overlay_path


def test_suspended_desktop_resumes_without_a_reboot(libvirt_driver, libvirt_host, demo_image, desktop_name):
    name = desktop_name()
    libvirt_driver.create_desktop(DesktopSpec(domain_name=name, image=BootImage.of(demo_image)))
    wait_for_console(libvirt_driver, name, "boots=1 ")

    libvirt_driver.suspend_desktop(name)
    assert libvirt_driver.desktop_state(name) == "suspended"

    libvirt_driver.start_desktop(name)

    assert libvirt_driver.desktop_state(name) == "running"
    # Restored from its saved memory rather than booted: libvirt says why it runs.
    assert run_reason(libvirt_host, name) == libvirt.VIR_DOMAIN_RUNNING_RESTORED


def test_power_actions_on_an_unknown_desktop_name_it(libvirt_driver, desktop_name):
    name = desktop_name()
    with pytest.raises(DesktopNotFound, match=name):
        libvirt_driver.start_desktop(name)
    with pytest.raises(DesktopNotFound, match=name):
        libvirt_driver.stop_desktop(name, SHUTDOWN_TIMEOUT_S)
    with pytest.raises(HypervisorError, match="domain_name"):
        libvirt_driver.suspend_desktop("../etc")
