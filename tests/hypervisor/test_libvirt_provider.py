"""The libvirt driver against the real libvirtd, with real QEMU guests booting the demo image."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from prometheus_client import REGISTRY

from hypervisor import domain_xml
from hypervisor.base import BootImage, DesktopSpec, DisplayEndpoint, HostUnreachable, HypervisorError
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider, console_readiness, last_console_line
from images.demo import DemoImage
from tests.fixtures import rfb_client
from tests.fixtures.common import free_port
from tests.fixtures.libvirt import desktop_prefix, destroy_quietly, wait_for_console

LABEL = "mois-office / kim <&> '100%'"


@dataclasses.dataclass(frozen=True)
class RunningDesktop:
    name: str
    endpoint: DisplayEndpoint
    console: str


@pytest.fixture(scope="module")
def running_desktop(
    libvirt_host: HostSettings, demo_image: DemoImage, libvirt_session_token: str
) -> Iterator[RunningDesktop]:
    """One booted desktop shared by the tests that only look at it."""
    driver = LibvirtProvider(libvirt_host)
    name = f"{desktop_prefix(libvirt_session_token)}shared"
    try:
        endpoint = driver.create_desktop(
            DesktopSpec(domain_name=name, image=BootImage.of(demo_image), label=LABEL)
        )
        console = wait_for_console(driver, name, "smartwork-vdi: desktop ready")
        yield RunningDesktop(name, endpoint, console)
    finally:
        destroy_quietly(driver, name)
        driver.close()


def _volume_names(host: HostSettings) -> set[str]:
    conn = libvirt.open(host.uri)
    try:
        pool = conn.storagePoolLookupByName(host.storage_pool)
        pool.refresh(0)
        return {volume.name() for volume in pool.listAllVolumes(0)}
    finally:
        conn.close()


def _domain_names(host: HostSettings) -> set[str]:
    conn = libvirt.open(host.uri)
    try:
        return {domain.name() for domain in conn.listAllDomains(0)}
    finally:
        conn.close()


def test_created_desktop_runs_and_its_vnc_server_answers(libvirt_driver, running_desktop):
    assert libvirt_driver.desktop_state(running_desktop.name) == "running"
    assert running_desktop.endpoint.host == "127.0.0.1"
    assert libvirt_driver.display(running_desktop.name) == running_desktop.endpoint
    assert (
        rfb_client.read_banner(running_desktop.endpoint.host, running_desktop.endpoint.port)
        == b"RFB 003.008\n"
    )


def test_starting_a_desktop_records_clone_and_boot_durations(libvirt_driver, running_desktop):
    """Operators see how long linked clones and boots take (histograms, by virtualisation type)."""
    virt_type = libvirt_driver.virt_type()
    assert REGISTRY.get_sample_value("vdi_desktop_clone_duration_seconds_count") >= 1
    boots = REGISTRY.get_sample_value("vdi_desktop_boot_duration_seconds_count", {"virt_type": virt_type})
    assert boots >= 1
    assert REGISTRY.get_sample_value("vdi_desktop_boot_duration_seconds_sum", {"virt_type": virt_type}) > 0


def test_desktop_boots_to_its_banner_with_label_and_disk(running_desktop, demo_image):
    ready = next(line for line in running_desktop.console.splitlines() if "desktop ready" in line)
    assert f"desktop={running_desktop.name}" in ready
    assert f"image=demo/{demo_image.version}" in ready
    assert f"disk=mounted, marker: demo {demo_image.version}" in ready
    assert ready.rstrip().endswith(f"label={LABEL}")


def _is_blue(rgb: tuple[int, int, int]) -> bool:
    red, green, blue = rgb
    return blue > 2 * max(red, green, 1)


def test_desktop_screen_shows_the_banner(running_desktop):
    # QEMU redraws its VNC copy of the text console on its own timer; poll until the banner is there.
    deadline = time.monotonic() + 30
    while True:
        framebuffer = rfb_client.grab_framebuffer(
            running_desktop.endpoint.host, running_desktop.endpoint.port
        )
        colours = framebuffer.colour_counts()
        background, _ = colours.most_common(1)[0]
        # Blue background, white banner, yellow label: a blank, boot-time or single-colour screen fails this.
        if (_is_blue(background) and len(colours) >= 3) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert framebuffer.width >= 640 and framebuffer.height >= 350
    assert _is_blue(background), f"background {background}"
    assert len(colours) >= 3, colours


def test_a_booted_desktop_is_ready(libvirt_driver, running_desktop):
    readiness = libvirt_driver.readiness(running_desktop.name)
    assert (readiness.ready, readiness.crashed) == (True, "")


@pytest.mark.parametrize(
    ("console", "ready", "crashed"),
    [
        ("Booting\r\nsmartwork-vdi: desktop ready desktop=d1\r\n", True, ""),
        ("Debian GNU/Linux 12\ndesk-1 login: ", True, ""),
        ("Booting\n[    1.2] Run /init as init process\n", False, ""),
        ("\x1b[0mKernel panic - not syncing: VFS: Unable to mount root fs\r\n", False, "Kernel panic"),
    ],
)
def test_readiness_is_read_from_the_serial_console(console, ready, crashed):
    readiness = console_readiness(console)
    assert readiness.ready is ready and readiness.crashed.startswith(crashed)
    assert bool(readiness.crashed) is bool(crashed)
    assert readiness.last_output == last_console_line(console)
    assert bool(readiness.waiting_for) is (not ready and not crashed)


def test_desktop_is_listed_as_ours(libvirt_driver, running_desktop):
    assert running_desktop.name in libvirt_driver.list_desktops()


def test_overlay_is_backed_by_the_base_image_volume(libvirt_host, running_desktop, demo_image):
    conn = libvirt.open(libvirt_host.uri)
    try:
        pool = conn.storagePoolLookupByName(libvirt_host.storage_pool)
        overlay = pool.storageVolLookupByName(f"{running_desktop.name}.qcow2")
        base = pool.storageVolLookupByName(f"demo-{demo_image.version}.qcow2")
        assert domain_xml.backing_store_path(overlay.XMLDesc(0)) == base.path()
        overlay_path = overlay.path()
    finally:
        conn.close()
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--force-share", "--output=json", overlay_path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == base.path()
    assert info["backing-filename-format"] == "qcow2"


def test_destroy_removes_domain_and_volumes_and_is_idempotent(
    libvirt_host, libvirt_driver, demo_image, desktop_name
):
    name = desktop_name()
    libvirt_driver.create_desktop(DesktopSpec(domain_name=name, image=BootImage.of(demo_image)))
    assert {f"{name}.qcow2", f"{name}.console.log"} <= _volume_names(libvirt_host)

    libvirt_driver.destroy_desktop(name)

    assert libvirt_driver.desktop_state(name) == "missing"
    assert name not in libvirt_driver.list_desktops()
    assert not {volume for volume in _volume_names(libvirt_host) if volume.startswith(name)}
    libvirt_driver.destroy_desktop(name)


def _garbage_kernel_image(demo_image: DemoImage, directory: Path) -> BootImage:
    kernel = directory / "not-a-kernel"
    kernel.write_bytes(b"this is not a Linux kernel\n" * 100)
    return dataclasses.replace(
        BootImage.of(demo_image), name="broken", version=secrets.token_hex(4), kernel=kernel
    )


@pytest.mark.parametrize("failure", ["garbage kernel", "too many vcpus"])
def test_failed_start_leaves_no_domain_and_no_volumes(
    failure, libvirt_host, libvirt_driver, demo_image, desktop_name, tmp_path
):
    name = desktop_name()
    if failure == "garbage kernel":
        spec = DesktopSpec(domain_name=name, image=_garbage_kernel_image(demo_image, tmp_path))
    else:
        spec = DesktopSpec(domain_name=name, image=BootImage.of(demo_image), vcpus=100_000)

    with pytest.raises(HypervisorError) as raised:
        libvirt_driver.create_desktop(spec)

    assert raised.value.host == libvirt_host.name
    assert name in str(raised.value)
    assert name not in _domain_names(libvirt_host)
    assert not {volume for volume in _volume_names(libvirt_host) if volume.startswith(name)}


def test_creating_an_existing_desktop_fails_and_keeps_the_first(
    libvirt_host, libvirt_driver, demo_image, desktop_name
):
    name = desktop_name()
    spec = DesktopSpec(domain_name=name, image=BootImage.of(demo_image))
    first = libvirt_driver.create_desktop(spec)

    with pytest.raises(HypervisorError, match="already exists"):
        libvirt_driver.create_desktop(spec)

    assert libvirt_driver.desktop_state(name) == "running"
    assert libvirt_driver.display(name) == first
    assert f"{name}.qcow2" in _volume_names(libvirt_host)


def test_destroy_refuses_a_domain_smartwork_did_not_create(libvirt_host, libvirt_driver, desktop_name):
    name = desktop_name()
    conn = libvirt.open(libvirt_host.uri)
    try:
        foreign = conn.defineXML(
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        try:
            with pytest.raises(HypervisorError, match="not created by smartwork-vdi"):
                libvirt_driver.destroy_desktop(name)
            assert name not in libvirt_driver.list_desktops()
            assert libvirt_driver.desktop_state(name) == "shutoff"
        finally:
            foreign.undefine()
    finally:
        conn.close()


def test_concurrent_creates_upload_a_new_image_once(libvirt_host, demo_image, desktop_name, tmp_path, caplog):
    image = dataclasses.replace(BootImage.of(demo_image), version=f"fresh-{secrets.token_hex(4)}")
    names = [desktop_name(), desktop_name()]
    drivers = [LibvirtProvider(libvirt_host) for _ in names]
    errors: list[Exception] = []

    def create(driver: LibvirtProvider, name: str) -> None:
        try:
            driver.create_desktop(DesktopSpec(domain_name=name, image=image))
        except Exception as exc:
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="hypervisor.libvirt_provider")
    threads = [threading.Thread(target=create, args=pair) for pair in zip(drivers, names, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for driver in drivers:
        driver.close()

    assert not errors
    uploads = [record.getMessage() for record in caplog.records if "uploaded" in record.getMessage()]
    assert len(uploads) == 3, uploads  # disk, kernel and initrd, each once


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("qemu+tcp://127.0.0.1:{port}/system", id="refused-tcp"),
        pytest.param("test:///nonexistent/{port}.xml", id="missing-test-file"),
    ],
)
def test_unreachable_host_raises_host_unreachable_naming_it(uri):
    host = HostSettings(name="ghost-host", uri=uri.format(port=free_port()))
    driver = LibvirtProvider(host)

    with pytest.raises(HostUnreachable) as raised:
        driver.list_desktops()

    assert raised.value.host == "ghost-host"
    assert "ghost-host" in str(raised.value)
    assert "cannot reach hypervisor at" in str(raised.value)


def test_unreachable_uri_is_shown_without_credentials():
    host = HostSettings(name="ghost-host", uri=f"qemu+tcp://admin:s3cret@127.0.0.1:{free_port()}/system?x=y")

    with pytest.raises(HostUnreachable) as raised:
        LibvirtProvider(host).desktop_state("any")

    assert "s3cret" not in str(raised.value)
    assert "admin" not in str(raised.value)


def test_virt_type_matches_the_hosts_hardware_virtualization(libvirt_driver):
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    expected = "kvm" if flags & {"vmx", "svm"} and Path("/dev/kvm").exists() else "qemu"
    assert libvirt_driver.virt_type() == expected


def test_invalid_desktop_name_is_rejected_before_touching_the_host(libvirt_driver, demo_image):
    with pytest.raises(HypervisorError, match="domain_name"):
        libvirt_driver.create_desktop(
            DesktopSpec(domain_name="../etc/passwd", image=BootImage.of(demo_image))
        )
