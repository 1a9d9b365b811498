"""Credential injection against a real QEMU desktop: its VNC server asks for the password the broker
generated, refuses anyone without it, and the gateway logs in for the browser.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from gateway import rfb
from hypervisor.base import BootImage, DesktopSpec, DisplayEndpoint
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider
from images.demo import DemoImage
from tests.fixtures.gateway import RfbBrowser, run_async, running_gateway
from tests.fixtures.libvirt import desktop_prefix, destroy_quietly
from tests.fixtures.rfb_client import grab_framebuffer

PASSWORD = "Qemu1234"


@pytest.fixture(scope="module")
def locked_display(
    libvirt_host: HostSettings, demo_image: DemoImage, libvirt_session_token: str
) -> Iterator[DisplayEndpoint]:
    """A QEMU desktop whose VNC server has a password, as the broker now creates every desktop."""
    driver = LibvirtProvider(libvirt_host)
    name = f"{desktop_prefix(libvirt_session_token)}vnc-password"
    try:
        yield driver.create_desktop(
            DesktopSpec(domain_name=name, image=BootImage.of(demo_image), vnc_password=PASSWORD)
        )
    finally:
        destroy_quietly(driver, name)
        driver.close()


def security_types_offered(display: DisplayEndpoint) -> bytes:
    with socket.create_connection((display.host, display.port), timeout=10) as sock:
        sock.recv(12)
        sock.sendall(b"RFB 003.008\n")
        count = sock.recv(1)[0]
        return sock.recv(count)


def vnc_login(display: DisplayEndpoint, password: str) -> bytes:
    """A direct VNC-authentication attempt; the 4-byte SecurityResult."""
    with socket.create_connection((display.host, display.port), timeout=10) as sock:
        sock.recv(12)
        sock.sendall(b"RFB 003.008\n")
        sock.recv(sock.recv(1)[0])
        sock.sendall(bytes((rfb.SECURITY_VNC_AUTH,)))
        challenge = b""
        while len(challenge) < 16:
            challenge += sock.recv(16 - len(challenge))
        sock.sendall(rfb.vnc_auth_response(password, challenge))
        return sock.recv(4)


def test_direct_vnc_access_without_the_password_fails(locked_display):
    assert security_types_offered(locked_display) == bytes((rfb.SECURITY_VNC_AUTH,))
    with pytest.raises(ValueError, match="does not offer security type None"):
        grab_framebuffer(locked_display.host, locked_display.port)
    assert vnc_login(locked_display, "wrong-pw") != rfb.SECURITY_RESULT_OK
    assert vnc_login(locked_display, PASSWORD) == rfb.SECURITY_RESULT_OK


def test_the_gateway_logs_in_and_relays_a_framebuffer(console_db, gateway_config, locked_display):
    session = console_db.add_session(
        vnc_host=locked_display.host, vnc_port=locked_display.port, vnc_password=PASSWORD
    )

    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            browser = RfbBrowser(await gateway.connect(console_db.issue(session)))
            server_init = await browser.handshake()
            width, height = server_init.width, server_init.height
            # Raw for the pixels, and the Extended Clipboard, whose capabilities QEMU announces at once.
            encodings = (rfb.ENCODING_RAW, rfb.PSEUDO_EXTENDED_CLIPBOARD)
            browser.send(struct.pack(">BxH2i", rfb.CLIENT_SET_ENCODINGS, 2, *encodings))
            browser.send(
                struct.pack(">BBHHHH", rfb.CLIENT_FRAMEBUFFER_UPDATE_REQUEST, 0, 0, 0, width, height)
            )
            covered, clipboard_flags = 0, []
            while covered < width * height:
                kind = await browser.read(1)
                if kind == bytes((rfb.SERVER_CUT_TEXT,)):
                    (length,) = struct.unpack(">3xi", await browser.read(7))
                    clipboard_flags.append(rfb.extended_flags(await browser.read(abs(length))))
                    continue
                assert kind == b"\x00", kind  # a FramebufferUpdate
                (rects,) = struct.unpack(">xH", await browser.read(3))
                for _ in range(rects):
                    _, _, w, h, encoding = struct.unpack(">HHHHi", await browser.read(12))
                    assert encoding == rfb.ENCODING_RAW
                    await browser.read(w * h * server_init.pixel_format.bytes_per_pixel, timeout_s=30)
                    covered += w * h
            browser.conn.close()
            return server_init, clipboard_flags

    server_init, clipboard_flags = run_async(scenario())
    assert server_init.width > 0 and server_init.height > 0
    assert [flags & rfb.CLIPBOARD_CAPS for flags in clipboard_flags] == [rfb.CLIPBOARD_CAPS]
