"""`[logging] format = "json"`: the real broker and gateway processes write JSON lines, and one connect can be
followed from the broker's request to the gateway's tunnel by its request id (docs/logging.md)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.broker import BrokerClient
from tests.fixtures.common import VNC_PASSWORD_KEY, wait_until
from tests.fixtures.gateway import run_async, ws_connect
from vdi.lab.slapd import DEMO_PASSWORD

pytestmark = pytest.mark.e2e

FIELDS = {"time", "level", "logger", "message", "request_id", "user", "session"}


def json_lines(log: Path) -> list[dict]:
    """Every line of a process's output, each of which must be one JSON object."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def lines_with_request_id(log: Path, request_id: str) -> list[dict]:
    return [line for line in json_lines(log) if line["request_id"] == request_id]


def open_console_and_close(gateway_url: str, token: str, origin: str) -> bytes:
    async def scenario() -> bytes:
        conn = await ws_connect(f"{gateway_url}&token={token}", origin=origin)
        banner = await conn.read_message()
        conn.close()
        return banner

    return run_async(scenario())


def test_one_connect_carries_its_request_id_from_broker_to_gateway(stack_factory):
    stack = stack_factory(log_format="json")
    broker_log, gateway_log = stack.log_dir / "broker.log", stack.log_dir / "gateway.log"
    client = BrokerClient(stack.base_url)
    assert client.login("kimmj", DEMO_PASSWORD).status == 200
    connect = client.post("/api/v1/pools/mois-office/connect")
    assert connect.status == 200, connect.text
    session_id = connect.json()["session_id"]

    grant = client.post(f"/api/v1/sessions/{session_id}/console-token")
    assert grant.status == 200, grant.text
    request_id = grant.headers["X-Request-Id"]
    gateway_url = grant.json()["gateway_url"]
    assert parse_qs(urlsplit(gateway_url).query)["rid"] == [request_id]
    token = grant.json()["token"]
    banner = open_console_and_close(gateway_url, token, stack.base_url)

    assert banner.startswith(b"RFB ")
    wait_until(
        lambda: any(
            "tunnel closed" in line["message"] for line in lines_with_request_id(gateway_log, request_id)
        ),
        30,
        "the gateway's tunnel lines with the broker's request id",
    )
    gateway_lines = lines_with_request_id(gateway_log, request_id)
    assert any("tunnel open" in line["message"] for line in gateway_lines)
    assert {(line["user"], line["session"]) for line in gateway_lines if "tunnel" in line["message"]} == {
        ("kimmj", session_id)
    }
    broker_lines = lines_with_request_id(broker_log, request_id)
    assert any("console-token" in line["message"] for line in broker_lines)
    assert all(line["user"] == "kimmj" for line in broker_lines)
    connect_lines = [line for line in json_lines(broker_log) if "/connect" in line["message"]]
    assert connect_lines and connect_lines[-1]["request_id"] == connect.headers["X-Request-Id"]
    assert connect_lines[-1]["session"] == session_id

    for log in (broker_log, gateway_log):
        lines = json_lines(log)
        assert lines and all(set(line) >= FIELDS for line in lines), log
        text = log.read_text()
        for secret in (token, DEMO_PASSWORD, VNC_PASSWORD_KEY, "e2e-secret-"):
            assert secret not in text, (log.name, secret[:4])
    assert client.post(f"/api/v1/sessions/{session_id}/logoff").status == 200
