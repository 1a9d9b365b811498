"""Displays on remote hosts: the gateway reaches the host's loopback VNC through the host's sshd.

A real sshd (tests/fixtures/sshd.py) stands for the host's; a real QEMU desktop provides the VNC
display. Refusals (host key, login, forwarding) are seen by the browser as one generic close
reason, and in the gateway's log and metrics with the details.
"""

from __future__ import annotations

import logging
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from sqlalchemy import select, update
from tornado.websocket import WebSocketClientConnection

from broker.db.models import Desktop, Host
from gateway.ssh_channel import fingerprint
from gateway.websockify_plugin import ConsoleTokens
from hypervisor.base import BootImage, DesktopSpec, DisplayEndpoint
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider
from images.demo import DemoImage
from tests.fixtures.common import free_port
from tests.fixtures.gateway import (
    RFB_BANNER,
    ConsoleDatabase,
    ConsoleSession,
    FloodingVnc,
    eventually,
    metric,
    read_close,
    receive_until,
    run_async,
    running_gateway,
    stalls,
)
from tests.fixtures.libvirt import desktop_prefix, destroy_quietly
from tests.fixtures.sshd import SshServer, generate_key, public_key
from vdi.config import Config

CHANNEL_OPENS = "vdi_gateway_ssh_channel_opens_total"
TRANSPORTS_OPEN = "vdi_gateway_ssh_transports_open"
TRANSPORTS_OPENED = "vdi_gateway_ssh_transports_opened_total"
HOST_KEY_REFUSALS = "vdi_gateway_ssh_host_key_refusals_total"
REFUSED = "vdi_gateway_tunnels_refused_total"
GENERIC_REASON = "desktop display unreachable"


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vnc_display(
    libvirt_host: HostSettings, demo_image: DemoImage, libvirt_session_token: str
) -> Iterator[DisplayEndpoint]:
    """A QEMU desktop's VNC server on this machine's loopback, as on a remote host's."""
    driver = LibvirtProvider(libvirt_host)
    name = f"{desktop_prefix(libvirt_session_token)}ssh-route"
    try:
        yield driver.create_desktop(DesktopSpec(domain_name=name, image=BootImage.of(demo_image)))
    finally:
        destroy_quietly(driver, name)
        driver.close()


def with_ssh(config: Config, sshd: SshServer, known_hosts: Path, **gateway: object) -> Config:
    settings = config.gateway.model_copy(
        update={"ssh_key_file": sshd.client_key, "ssh_known_hosts": known_hosts, **gateway}
    )
    return config.model_copy(update={"gateway": settings})


@pytest.fixture
def ssh_config(gateway_config: Config, sshd: SshServer, tmp_path: Path) -> Config:
    return with_ssh(gateway_config, sshd, sshd.known_hosts(tmp_path / "known_hosts"))


def fingerprint_of(key: Path) -> str:
    return fingerprint(paramiko.PKey.from_path(key))


def route_over_ssh(console_db: ConsoleDatabase, session: ConsoleSession, address: str | None) -> None:
    """The session's desktop's host is reached over SSH, as `vdi host add --console-access ssh` sets."""
    with console_db.db.transaction() as s:
        host = s.scalar(select(Desktop.host_name).where(Desktop.id == session.desktop_id))
        s.execute(update(Host).where(Host.name == host).values(console_access="ssh", ssh_address=address))


def ssh_session(console_db: ConsoleDatabase, sshd: SshServer, port: int) -> ConsoleSession:
    session = console_db.add_session(vnc_port=port, vnc_host="127.0.0.1")
    route_over_ssh(console_db, session, str(sshd.address))
    return session


# -- an RFB client over the WebSocket ----------------------------------------------------------------


class RfbOverWebSocket:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.buffer = bytearray()

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            message = await self.conn.read_message()
            if message is None:
                raise AssertionError(f"closed: {self.conn.close_code} {self.conn.close_reason}")
            self.buffer += message
        data, self.buffer = bytes(self.buffer[:size]), self.buffer[size:]
        return data

    async def handshake(self) -> tuple[int, int, str]:
        """RFC 6143 section 7.1-7.3 with security type None; returns the framebuffer size and name."""
        assert await self.read(12) == RFB_BANNER
        self.conn.write_message(RFB_BANNER, binary=True)
        count = (await self.read(1))[0]
        assert 1 in await self.read(count), "the display offers security type None"
        self.conn.write_message(b"\x01", binary=True)
        assert await self.read(4) == b"\0\0\0\0", "SecurityResult OK"
        self.conn.write_message(b"\x01", binary=True)  # ClientInit, shared
        width, height = struct.unpack(">HH", await self.read(4))
        await self.read(16)  # pixel format
        (name_length,) = struct.unpack(">I", await self.read(4))
        return width, height, (await self.read(name_length)).decode("utf-8", "replace")


# -- the route ---------------------------------------------------------------------------------------


def test_rfb_handshake_goes_through_the_ssh_route(console_db, sshd, ssh_config, vnc_display, caplog):
    token = console_db.issue(ssh_session(console_db, sshd, vnc_display.port))
    opened = metric(CHANNEL_OPENS, result="success")

    async def scenario():
        async with running_gateway(ssh_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            width, height, _name = await RfbOverWebSocket(conn).handshake()
            assert width > 0 and height > 0
            conn.close()

    with caplog.at_level(logging.INFO, logger="gateway"):
        run_async(scenario())
    assert metric(CHANNEL_OPENS, result="success") == opened + 1
    assert f"to 127.0.0.1:{vnc_display.port} via ssh {sshd.address}" in caplog.text


def test_second_tunnel_to_the_same_host_reuses_the_ssh_connection(console_db, sshd, ssh_config, vnc_display):
    tokens = [console_db.issue(ssh_session(console_db, sshd, vnc_display.port)) for _ in range(3)]
    logins = sshd.accepted_logins()
    transports = metric(TRANSPORTS_OPENED)

    async def scenario():
        async with running_gateway(ssh_config, console_db.db) as gateway:
            first, second = [await gateway.connect(token) for token in tokens[:2]]
            for conn in (first, second):
                await receive_until(conn, RFB_BANNER)
            assert metric(TRANSPORTS_OPEN) == 1
            first.close()
            second.close()
            await eventually(lambda: len(gateway.app.tunnels) == 0, what="tunnels closed")
            third = await gateway.connect(tokens[2])  # after the others closed, before idle close
            await receive_until(third, RFB_BANNER)
            third.close()

    run_async(scenario())
    assert sshd.accepted_logins() == logins + 1
    assert metric(TRANSPORTS_OPENED) == transports + 1
    assert metric(TRANSPORTS_OPEN) == 0  # closed with the gateway


def test_idle_ssh_connection_closes_and_the_next_tunnel_logs_in_again(
    console_db, sshd, gateway_config, tmp_path, vnc_display
):
    config = with_ssh(gateway_config, sshd, sshd.known_hosts(tmp_path / "known_hosts"), ssh_idle_close_s=0.2)
    tokens = [console_db.issue(ssh_session(console_db, sshd, vnc_display.port)) for _ in range(2)]
    logins = sshd.accepted_logins()

    async def scenario():
        async with running_gateway(config, console_db.db) as gateway:
            conn = await gateway.connect(tokens[0])
            await receive_until(conn, RFB_BANNER)
            conn.close()
            await eventually(lambda: metric(TRANSPORTS_OPEN) == 0, what="idle SSH connection closed")
            conn = await gateway.connect(tokens[1])
            await receive_until(conn, RFB_BANNER)
            conn.close()

    run_async(scenario())
    assert sshd.accepted_logins() == logins + 2


def test_lost_ssh_connection_is_made_again_for_the_next_tunnel(console_db, sshd, ssh_config, fake_vnc):
    tokens = [console_db.issue(ssh_session(console_db, sshd, fake_vnc.port)) for _ in range(2)]
    logins = sshd.accepted_logins()

    async def scenario():
        async with fake_vnc.serving(), running_gateway(ssh_config, console_db.db) as gateway:
            conn = await gateway.connect(tokens[0])
            await receive_until(conn, RFB_BANNER)
            assert sshd.drop_connections() >= 1
            assert (await read_close(conn))[0] == 1000
            conn = await gateway.connect(tokens[1])
            assert await receive_until(conn, RFB_BANNER) == RFB_BANNER
            conn.close()

    run_async(scenario())
    assert sshd.accepted_logins() == logins + 2


def test_desktop_hanging_up_closes_the_websocket(console_db, sshd, ssh_config, fake_vnc):
    token = console_db.issue(ssh_session(console_db, sshd, fake_vnc.port))

    async def scenario():
        async with fake_vnc.serving(), running_gateway(ssh_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            conn.write_message(b"ping through ssh", binary=True)
            await receive_until(conn, b"ping through ssh")
            fake_vnc.hang_up()
            code, reason = await read_close(conn)
            assert (code, reason) == (1000, "desktop closed the connection")

    run_async(scenario())


def test_slow_browser_slows_the_desktop_through_ssh_too(console_db, sshd, ssh_config):
    """Backpressure holds across the SSH hop: the bridge stops reading the channel, sshd stops the desktop."""
    flood = FloodingVnc()
    token = console_db.issue(ssh_session(console_db, sshd, flood.port))

    async def scenario():
        async with flood.serving(), running_gateway(ssh_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await eventually(lambda: flood.sent > 0, what="flood started")
            stalled_at = await stalls(lambda: flood.sent)
            # Socket buffers on each hop plus SSH channel windows hold some MiB, not more.
            assert stalled_at < 64 * 1024 * 1024
            conn.close()

    run_async(scenario())


# -- refusals ----------------------------------------------------------------------------------------


async def refused(config: Config, console_db: ConsoleDatabase, token: str) -> tuple[int | None, str | None]:
    async with running_gateway(config, console_db.db) as gateway:
        return await read_close(await gateway.connect(token))


def test_wrong_host_key_is_refused_and_the_log_shows_both_fingerprints(
    console_db, sshd, gateway_config, tmp_path, caplog
):
    impostor = generate_key(tmp_path / "impostor", "not the host's key")
    config = with_ssh(gateway_config, sshd, sshd.known_hosts(tmp_path / "known_hosts", key=impostor))
    token = console_db.issue(ssh_session(console_db, sshd, free_port()))
    mismatches = metric(HOST_KEY_REFUSALS, reason="mismatch")
    refusals = metric(REFUSED, reason="upstream_ssh")
    logins = sshd.accepted_logins()

    assert run_async(refused(config, console_db, token)) == (1011, GENERIC_REASON)
    line = next(r.getMessage() for r in caplog.records if "does not match" in r.getMessage())
    assert f"host key of {sshd.known_hosts_name} does not match" in line
    assert f"expected ssh-ed25519 {fingerprint_of(impostor)}" in line
    assert f"presented ssh-ed25519 {fingerprint_of(sshd.host_key)}" in line
    for key in (impostor, sshd.host_key):
        assert public_key(key).split()[1] not in caplog.text  # fingerprints only, never the key
    assert metric(HOST_KEY_REFUSALS, reason="mismatch") == mismatches + 1
    assert metric(REFUSED, reason="upstream_ssh") == refusals + 1
    assert sshd.accepted_logins() == logins  # the gateway never logged in to the impostor


def test_unknown_host_is_refused(console_db, sshd, gateway_config, tmp_path, caplog):
    (tmp_path / "known_hosts").write_text("")
    config = with_ssh(gateway_config, sshd, tmp_path / "known_hosts")
    token = console_db.issue(ssh_session(console_db, sshd, free_port()))
    unknown = metric(HOST_KEY_REFUSALS, reason="unknown")

    assert run_async(refused(config, console_db, token)) == (1011, GENERIC_REASON)
    assert f"host key of {sshd.known_hosts_name} is unknown" in caplog.text
    assert f"presented ssh-ed25519 {fingerprint_of(sshd.host_key)}" in caplog.text
    assert metric(HOST_KEY_REFUSALS, reason="unknown") == unknown + 1


def test_key_the_host_does_not_authorize_is_refused(console_db, sshd, gateway_config, tmp_path, caplog):
    stranger = generate_key(tmp_path / "stranger", "a key no host authorizes")
    config = with_ssh(gateway_config, sshd, sshd.known_hosts(tmp_path / "known_hosts"), ssh_key_file=stranger)
    token = console_db.issue(ssh_session(console_db, sshd, free_port()))
    failures = metric(CHANNEL_OPENS, result="auth_failed")

    assert run_async(refused(config, console_db, token)) == (1011, GENERIC_REASON)
    assert f"{sshd.address}: public key authentication as {sshd.user} refused" in caplog.text
    assert metric(CHANNEL_OPENS, result="auth_failed") == failures + 1


def test_display_not_listening_on_the_host_is_refused(console_db, sshd, ssh_config, caplog):
    port = free_port()
    token = console_db.issue(ssh_session(console_db, sshd, port))
    refusals = metric(CHANNEL_OPENS, result="channel_refused")

    assert run_async(refused(ssh_config, console_db, token)) == (1011, GENERIC_REASON)
    assert f"would not open a channel to 127.0.0.1:{port}" in caplog.text
    assert metric(CHANNEL_OPENS, result="channel_refused") == refusals + 1


def test_unreachable_sshd_is_refused(console_db, ssh_config, caplog):
    session = console_db.add_session(vnc_port=5900)
    dead = free_port()
    route_over_ssh(console_db, session, f"root@127.0.0.1:{dead}")
    token = console_db.issue(session)

    assert run_async(refused(ssh_config, console_db, token)) == (1011, GENERIC_REASON)
    assert f"root@127.0.0.1:{dead}: cannot connect" in caplog.text


def test_gateway_without_ssh_settings_refuses_ssh_routes(console_db, sshd, gateway_config, caplog):
    token = console_db.issue(ssh_session(console_db, sshd, free_port()))
    logins = sshd.accepted_logins()

    assert run_async(refused(gateway_config, console_db, token)) == (1011, GENERIC_REASON)
    assert "gateway.ssh_key_file and gateway.ssh_known_hosts not set" in caplog.text
    assert sshd.accepted_logins() == logins


def test_ssh_host_without_address_uses_its_libvirt_uri(console_db, sshd, ssh_config, fake_vnc):
    session = console_db.add_session(vnc_port=fake_vnc.port)
    route_over_ssh(console_db, session, None)
    with console_db.db.transaction() as s:
        host = s.scalar(select(Desktop.host_name).where(Desktop.id == session.desktop_id))
        uri = f"qemu+ssh://{sshd.user}@127.0.0.1:{sshd.port}/system"
        s.execute(update(Host).where(Host.name == host).values(uri=uri))
    token = console_db.issue(session)

    async def scenario():
        async with fake_vnc.serving(), running_gateway(ssh_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            assert await receive_until(conn, RFB_BANNER) == RFB_BANNER
            conn.close()

    run_async(scenario())


# -- stock websockify ----------------------------------------------------------------------------------


def test_websockify_plugin_refuses_an_ssh_route(console_db, sshd, gateway_config_file, caplog):
    session = ssh_session(console_db, sshd, 5901)
    token = console_db.issue(session)
    plugin = ConsoleTokens(str(gateway_config_file))

    with caplog.at_level(logging.INFO, logger="gateway.websockify_plugin"):
        assert plugin.lookup(token) is None
    assert f"console refused: session {session.session_id} is on host" in caplog.text
    assert "websockify can only connect directly" in caplog.text
    assert token not in caplog.text


def test_fingerprints_match_ssh_keygen(sshd):
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{sshd.host_key}.pub"], check=True, capture_output=True, text=True
    ).stdout
    assert listed.split()[1] == fingerprint_of(sshd.host_key)
