"""The gateway as its own process, and stock websockify with our token plugin."""

from __future__ import annotations

import json
import urllib.request

import pytest
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketError

from tests.fixtures.gateway import (
    RFB_BANNER,
    eventually,
    read_close,
    receive_until,
    run_async,
    ws_connect,
)


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.loads(response.read())


def test_vdi_gateway_process_relays_on_its_own(console_db, fake_vnc, gateway_process):
    """Only `vdi gateway` and the database exist here: no broker process is needed to relay."""
    service, config = gateway_process
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    url = f"ws://127.0.0.1:{config.gateway.port}{config.gateway.path}?token={token}"

    async def scenario():
        async with fake_vnc.serving():
            conn = await ws_connect(url)
            await receive_until(conn, RFB_BANNER)
            for round_trip in range(10):
                payload = bytes([round_trip]) * 50_000
                conn.write_message(payload, binary=True)
                await receive_until(conn, payload)
            # /healthz is a blocking call here, but the tunnel lives in the other process.
            assert _health(config.gateway.port)["tunnels_open"] == 1
            service.proc.terminate()  # SIGTERM: the gateway closes its tunnels, then exits
            assert await read_close(conn) == (1001, "gateway shutting down")
            await eventually(lambda: service.proc.poll() is not None, what="gateway exit")
            await eventually(lambda: not fake_vnc.streams, what="desktop connection closed")

    run_async(scenario())
    assert service.proc.returncode == 0
    log = service.output()
    assert "tunnel open: session" in log and "tunnel closed: session" in log
    assert "500000 bytes to desktop" in log
    assert token not in log


def test_websockify_with_the_token_plugin(console_db, fake_vnc, websockify_process):
    service, port = websockify_process
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    url = f"ws://127.0.0.1:{port}/?token={token}"

    async def scenario():
        async with fake_vnc.serving():
            conn = await ws_connect(url, subprotocols=["binary"])
            await receive_until(conn, RFB_BANNER)
            conn.write_message(b"through websockify", binary=True)
            await receive_until(conn, b"through websockify")
            await eventually(lambda: b"through websockify" in fake_vnc.received, what="bytes upstream")
            with pytest.raises((HTTPClientError, StreamClosedError, WebSocketError)):
                await ws_connect(url, subprotocols=["binary"])
            conn.close()
            assert fake_vnc.connections == 1

    run_async(scenario())
    service.wait_for_output("console refused: console token already used (token ***)")
    # websockify's own refusal line would name the token; the plugin's log filter masks it.
    service.wait_for_output("Token '***' not found")
    assert token not in service.output()
