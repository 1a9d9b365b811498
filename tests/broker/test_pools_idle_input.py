"""The gateway records a session's last keyboard or mouse input, which the pool's idle timeout reads."""

from __future__ import annotations

from broker.db.models import DesktopSession
from tests.fixtures.gateway import RFB_BANNER, eventually, receive_until, run_async, running_gateway

FRAMEBUFFER_UPDATE_REQUEST = b"\x03\x01\x00\x00\x00\x00\x00\x40\x00\x30"
POINTER_EVENT = b"\x05\x00\x00\x10\x00\x10"


def last_input(console_db, session_id: str):
    with console_db.db.transaction() as s:
        return s.get(DesktopSession, session_id).last_input_at


def test_pointer_events_count_as_input_and_update_requests_do_not(console_db, fake_vnc, gateway_config):
    session = console_db.add_session(vnc_port=fake_vnc.port)
    token = console_db.issue(session)

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            conn.write_message(FRAMEBUFFER_UPDATE_REQUEST, binary=True)
            await eventually(
                lambda: bytes(fake_vnc.received).endswith(FRAMEBUFFER_UPDATE_REQUEST), what="relayed"
            )
            assert last_input(console_db, session.session_id) is None
            conn.write_message(POINTER_EVENT, binary=True)
            await eventually(lambda: last_input(console_db, session.session_id), what="last input recorded")
            conn.close()

    run_async(scenario())
