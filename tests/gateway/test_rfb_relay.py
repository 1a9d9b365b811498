"""Credential injection and the message-aware relay against a password-protected desktop.

The fake desktop (tests/fixtures/gateway.py) asks for VNC authentication like QEMU with a password;
the browser side speaks RFB as noVNC does, over a real WebSocket to the in-process gateway.
"""

from __future__ import annotations

import hashlib
import logging
import struct

import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent
from broker.db.tokens import ConsolePolicy
from gateway import rfb
from tests.fixtures.gateway import (
    SERVER_INIT,
    PasswordVncServer,
    RfbBrowser,
    SilentVnc,
    eventually,
    metric,
    read_close,
    run_async,
    running_gateway,
)

PASSWORD = "s3cretPw"
REFUSED = "vdi_gateway_tunnels_refused_total"
STOPPED = "vdi_gateway_clipboard_transfers_stopped_total"
KEY_EVENT = struct.pack(">BBxxI", rfb.CLIENT_KEY_EVENT, 1, 0x61)
FB_REQUEST = struct.pack(">BBHHHH", rfb.CLIENT_FRAMEBUFFER_UPDATE_REQUEST, 1, 0, 0, 64, 48)


def client_cut(text: bytes) -> bytes:
    return struct.pack(">B3xi", rfb.CLIENT_CUT_TEXT, len(text)) + text


def server_cut(text: bytes) -> bytes:
    return struct.pack(">B3xi", rfb.SERVER_CUT_TEXT, len(text)) + text


def clipboard_audits(console_db) -> list[AuditEvent]:
    with console_db.db.transaction() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == "console.clipboard")).all()
        s.expunge_all()
        return list(rows)


async def open_console(gateway, console_db, session, policy: ConsolePolicy | None = None) -> RfbBrowser:
    browser = RfbBrowser(await gateway.connect(console_db.issue(session, policy=policy)))
    assert await browser.handshake() == SERVER_INIT
    return browser


@pytest.mark.parametrize("desktop_version", [3, 7, 8])
def test_the_gateway_logs_in_and_the_browser_gets_security_none(console_db, gateway_config, desktop_version):
    desktop = PasswordVncServer(PASSWORD, version=desktop_version)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session)
            browser.send(FB_REQUEST + KEY_EVENT)
            await eventually(
                lambda: bytes(desktop.received) == FB_REQUEST + KEY_EVENT, what="messages relayed"
            )
            await desktop.send(bytes((rfb.SERVER_BELL,)))
            assert await browser.read(1) == bytes((rfb.SERVER_BELL,))
            browser.conn.close()

    run_async(scenario())
    assert desktop.logins == [True]
    assert desktop.client_init == b"\x01"  # shared: a second console must not push the first off


@pytest.mark.parametrize("browser_version", [3, 7])
def test_older_rfb_browsers_are_served_too(console_db, gateway_config, browser_version):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = RfbBrowser(await gateway.connect(console_db.issue(session)))
            assert await browser.handshake(browser_version) == SERVER_INIT
            browser.send(KEY_EVENT)
            await eventually(lambda: bytes(desktop.received) == KEY_EVENT, what="key event relayed")
            browser.conn.close()

    run_async(scenario())


def test_set_encodings_keeps_only_what_the_gateway_can_frame(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    asked = [50, rfb.ENCODING_TIGHT, rfb.ENCODING_ZRLE, -312, rfb.ENCODING_RAW, rfb.PSEUDO_EXTENDED_CLIPBOARD]
    kept = [rfb.ENCODING_TIGHT, rfb.ENCODING_ZRLE, rfb.ENCODING_RAW, rfb.PSEUDO_EXTENDED_CLIPBOARD]

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session)
            browser.send(struct.pack(f">BxH{len(asked)}i", 2, len(asked), *asked))
            expected = struct.pack(f">BxH{len(kept)}i", 2, len(kept), *kept)
            await eventually(lambda: bytes(desktop.received) == expected, what="filtered SetEncodings")
            browser.conn.close()

    run_async(scenario())


def test_a_wrong_password_is_refused_by_the_desktop_and_the_browser_sees_a_close(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password="not-it")
    before = metric(REFUSED, reason="desktop_auth")

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            return await read_close(await gateway.connect(console_db.issue(session)))

    assert run_async(scenario()) == (1011, "desktop display unreachable")
    assert desktop.logins == [False]
    assert metric(REFUSED, reason="desktop_auth") == before + 1


def test_a_password_sealed_under_another_key_is_refused_without_reaching_the_desktop(
    console_db, gateway_config
):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(
        vnc_port=desktop.port, vnc_password=PASSWORD, key="another-key-another-key-another-key!"
    )
    before = metric(REFUSED, reason="no_key")

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            return await read_close(await gateway.connect(console_db.issue(session)))

    assert run_async(scenario()) == (1011, "console service unavailable")
    assert desktop.logins == []
    assert metric(REFUSED, reason="no_key") == before + 1


def test_the_password_never_reaches_logs_or_the_browser(console_db, gateway_config, caplog):
    caplog.set_level(logging.DEBUG)
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session)
            browser.conn.close()
            return browser

    browser = run_async(scenario())
    assert PASSWORD.encode() not in bytes(browser.rfb)
    assert caplog.records
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("message", "reason", "refusal"),
    [
        (b"\x09\x00\x00\x00", "unsupported client message type 9", "rfb_unsupported"),
        (struct.pack(">B3xi", 6, 64 * 1024 * 1024), "client message too large", "rfb_oversized"),
        (
            b"\x00" + b"\x00" * 3 + bytes((12,)) + b"\x00" * 15,
            "bits-per-pixel must be 8, 16 or 32",
            "rfb_malformed",
        ),
    ],
    ids=["unknown-type", "oversized-cut-text", "bad-pixel-format"],
)
def test_a_malformed_or_oversized_message_closes_with_a_reason(
    console_db, gateway_config, message, reason, refusal
):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    before = metric(REFUSED, reason=refusal)

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session)
            browser.send(KEY_EVENT)
            await eventually(lambda: bytes(desktop.received) == KEY_EVENT, what="key event relayed")
            browser.send(message)
            closed = await read_close(browser.conn)
            await eventually(lambda: not desktop.streams, what="desktop connection closed")
            return closed

    assert run_async(scenario()) == (1008, reason)
    assert bytes(desktop.received) == KEY_EVENT  # nothing of the refused message reached the desktop
    assert metric(REFUSED, reason=refusal) == before + 1


def test_a_desktop_breaking_rfb_closes_the_console_without_details_for_the_browser(
    console_db, gateway_config
):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    before = metric(REFUSED, reason="rfb_unsupported")

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session)
            await desktop.send(bytes((rfb.SERVER_BELL,)))
            assert await browser.read(1) == bytes((rfb.SERVER_BELL,))
            await desktop.send(bytes((99,)))
            return await read_close(browser.conn)

    assert run_async(scenario()) == (1011, "desktop display protocol error")
    assert metric(REFUSED, reason="rfb_unsupported") == before + 1


def test_a_browser_that_stalls_its_handshake_is_dropped(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    config = gateway_config.model_copy(
        update={"gateway": gateway_config.gateway.model_copy(update={"rfb_handshake_timeout_s": 0.5})}
    )
    before = metric(REFUSED, reason="rfb_timeout")

    async def scenario():
        async with desktop.serving(), running_gateway(config, console_db.db) as gateway:
            browser = RfbBrowser(await gateway.connect(console_db.issue(session)))
            await browser.read(12)  # the banner, then silence
            return await read_close(browser.conn)

    assert run_async(scenario()) == (1008, "RFB handshake timed out")
    assert metric(REFUSED, reason="rfb_timeout") == before + 1


def test_a_desktop_that_never_answers_the_handshake_is_dropped(console_db, gateway_config):
    desktop = SilentVnc()
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    config = gateway_config.model_copy(
        update={"gateway": gateway_config.gateway.model_copy(update={"rfb_handshake_timeout_s": 0.5})}
    )
    before = metric(REFUSED, reason="rfb_timeout")

    async def scenario():
        async with desktop.serving(), running_gateway(config, console_db.db) as gateway:
            return await read_close(await gateway.connect(console_db.issue(session)))

    assert run_async(scenario()) == (1011, "desktop display unreachable")
    assert metric(REFUSED, reason="rfb_timeout") == before + 1


# -- clipboard policy ----------------------------------------------------------------------------------


def test_to_client_blocks_the_browsers_clipboard_and_audits_it(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    secret_text = b"confidential paste from the internet"
    before = metric(STOPPED, direction="client_to_desktop", result="blocked")

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session, ConsolePolicy(clipboard="to_client"))
            browser.send(client_cut(secret_text) + KEY_EVENT)
            await eventually(
                lambda: bytes(desktop.received) == KEY_EVENT, what="key event after the cut text"
            )
            notice = await browser.notice()
            await eventually(lambda: clipboard_audits(console_db), what="audit row")
            browser.conn.close()
            return notice

    notice = run_async(scenario())
    assert notice == {"notice": "clipboard", "direction": "to_desktop", "result": "blocked"}
    assert secret_text not in bytes(desktop.received)
    [audit] = clipboard_audits(console_db)
    assert (audit.actor, audit.result, audit.target) == (session.username, "blocked", session.domain_name)
    assert audit.detail == {
        "session": session.session_id,
        "direction": "to_desktop",
        "reason": "policy",
        "size": len(secret_text),
        "sha256": hashlib.sha256(secret_text).hexdigest(),
    }
    assert secret_text.decode() not in str(audit.detail)
    assert metric(STOPPED, direction="client_to_desktop", result="blocked") == before + 1


def test_to_desktop_keeps_the_desktops_clipboard_from_the_browser(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    text = b"document text that must stay on the desktop"

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session, ConsolePolicy(clipboard="to_desktop"))
            await desktop.send(server_cut(text) + bytes((rfb.SERVER_BELL,)))
            assert await browser.read(1) == bytes((rfb.SERVER_BELL,))  # the bell came; the text did not
            browser.send(client_cut(b"allowed in"))
            await eventually(lambda: bytes(desktop.received) == client_cut(b"allowed in"), what="cut text in")
            await eventually(lambda: clipboard_audits(console_db), what="audit row")
            browser.conn.close()
            return browser

    browser = run_async(scenario())
    assert text not in bytes(browser.rfb)
    [audit] = clipboard_audits(console_db)
    assert audit.detail["direction"] == "to_client" and audit.detail["size"] == len(text)


def test_text_over_the_limit_is_cut_and_audited_both_ways(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    policy = ConsolePolicy(clipboard="both", clipboard_max_bytes=10)

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(gateway, console_db, session, policy)
            browser.send(client_cut(b"0123456789abcdef"))
            await eventually(lambda: bytes(desktop.received) == client_cut(b"0123456789"), what="cut text")
            await desktop.send(server_cut(b"ABCDEFGHIJKLMNOP"))
            assert await browser.read(18) == server_cut(b"ABCDEFGHIJ")
            await eventually(lambda: len(clipboard_audits(console_db)) == 2, what="two audit rows")
            browser.conn.close()

    run_async(scenario())
    assert {(a.result, a.detail["direction"], a.detail["size"]) for a in clipboard_audits(console_db)} == {
        ("truncated", "to_desktop", 16),
        ("truncated", "to_client", 16),
    }


def test_an_extended_clipboard_zlib_bomb_from_the_desktop_is_dropped(console_db, gateway_config):
    desktop = PasswordVncServer(PASSWORD)
    session = console_db.add_session(vnc_port=desktop.port, vnc_password=PASSWORD)
    bomb = rfb.build_provide({rfb.CLIPBOARD_TEXT: b"\0" * (64 * 1024 * 1024)})
    extended = struct.pack(">B3xi", rfb.SERVER_CUT_TEXT, -len(bomb)) + bomb

    async def scenario():
        async with desktop.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            browser = await open_console(
                gateway, console_db, session, ConsolePolicy(clipboard_max_bytes=4096)
            )
            await desktop.send(extended + bytes((rfb.SERVER_BELL,)))
            assert await browser.read(1) == bytes((rfb.SERVER_BELL,))
            assert (await browser.notice())["result"] == "blocked"
            await eventually(lambda: clipboard_audits(console_db), what="audit row")
            browser.conn.close()

    run_async(scenario())
    [audit] = clipboard_audits(console_db)
    assert (audit.result, audit.detail["reason"], audit.detail["size"]) == ("blocked", "too_large", len(bomb))
