"""The gateway application: health, metrics, and logs that never carry a console token."""

from __future__ import annotations

import json
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from gateway.relay import origin_allowed, token_from_query
from tests.fixtures.gateway import RFB_BANNER, read_close, receive_until, run_async, running_gateway


class BrokenDatabase:
    """A database whose driver raises something unexpected, to reach Tornado's exception logging."""

    async def run(self, fn):
        raise RuntimeError("driver bug")

    run_statements = run


def _fetch(url: str, **kwargs):
    return AsyncHTTPClient().fetch(url, raise_error=False, **kwargs)


def test_healthz_answers_ok(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            response = await _fetch(gateway.http_url + "/healthz")
            assert response.code == 200
            assert json.loads(response.body) == {"status": "ok", "tunnels_open": 0}

    run_async(scenario())


def test_metrics_are_prometheus_text(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            response = await _fetch(gateway.http_url + "/metrics")
            assert response.code == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.body.decode()
            assert 'vdi_gateway_tunnels_refused_total{reason="origin"}' in text
            assert 'vdi_gateway_bytes_relayed_total{direction="client_to_desktop"}' in text

    run_async(scenario())


def test_unknown_path_is_json_404(console_db, gateway_config):
    async def scenario():
        async with running_gateway(gateway_config, console_db.db) as gateway:
            response = await _fetch(gateway.http_url + "/nope?token=abc")
            assert response.code == 404
            assert json.loads(response.body)["status"] == 404

    run_async(scenario())


def _assert_absent(caplog: pytest.LogCaptureFixture, secrets: list[str]) -> None:
    assert caplog.records, "nothing was logged; the test would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + (
            logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        )
        for secret in secrets:
            assert secret not in text, f"token leaked in {record.name}: {text}"


def test_tokens_never_reach_the_logs(console_db, fake_vnc, gateway_config, caplog):
    caplog.set_level(logging.DEBUG)
    session = console_db.add_session(vnc_port=fake_vnc.port)
    good, bad_origin = console_db.issue(session), console_db.issue(session)
    forged = "forged-token-value-0123456789"

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(good)
            await receive_until(conn, RFB_BANNER)
            await read_close(await gateway.connect(good))  # reused: refused
            await read_close(await gateway.connect(forged))
            with pytest.raises(HTTPClientError):
                await gateway.connect(bad_origin, origin="http://evil.example")
            plain = await _fetch(gateway.url(forged).replace("ws://", "http://"))  # not an upgrade
            assert plain.code == 400
            conn.close()
            await read_close(conn)

    run_async(scenario())
    access = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any(line.startswith("101 GET /ws ") for line in access), access
    assert any(line.startswith("403 GET /ws ") for line in access), access
    assert any(
        "console refused: console token already used (token ***)" in r.getMessage() for r in caplog.records
    )
    _assert_absent(caplog, [good, bad_origin, forged])


def test_uncaught_errors_are_logged_without_the_token(gateway_config, caplog):
    caplog.set_level(logging.DEBUG)
    token = (
        "secret-token-never-logged-0123456789-abcdef"  # well formed: malformed ones never reach the database
    )

    async def scenario():
        async with running_gateway(gateway_config, BrokenDatabase()) as gateway:
            code, _ = await read_close(await gateway.connect(token))
            assert code != 1000

    run_async(scenario())
    assert any("driver bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    _assert_absent(caplog, [token])


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://127.0.0.1:8080", True),
        ("HTTP://LocalHost:8080", True),
        ("https://vdi.example.kr", True),  # default port left out by the browser
        ("http://127.0.0.1:8081", False),
        ("https://127.0.0.1:8080", False),
        ("http://127.0.0.1:8080.evil.example", False),
        ("http://evil.example", False),
        ("null", False),
        ("", False),
    ],
)
def test_origin_allowed(origin, allowed):
    configured = ["http://127.0.0.1:8080", "http://localhost:8080", "https://vdi.example.kr:443"]
    assert origin_allowed(origin, configured) is allowed


@pytest.mark.parametrize(
    ("uri", "token"),
    [
        ("/ws?token=abc", "abc"),
        ("/websockify?token=abc&x=1", "abc"),
        ("/ws?path=websockify%3Ftoken%3Dabc", "abc"),
        ("/ws", None),
        ("/ws?path=websockify", None),
    ],
)
def test_token_from_query(uri, token):
    assert token_from_query(uri) == token
