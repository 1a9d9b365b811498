"""Request ids: every broker response names its request (X-Request-Id) and its log lines carry it; an id
sent by the client is kept only from broker.trusted_proxies, and only when it is a short plain token."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterator

import pytest

from monitoring.logs import JsonFormatter
from tests.fixtures.broker import BrokerClient, make_broker_config
from tests.fixtures.common import wait_until

GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def trusting_broker_url(broker_server, tmp_path, fake_authenticator, unreachable_providers) -> str:
    """A broker that believes its loopback clients are its reverse proxy."""
    config = make_broker_config(tmp_path / "proxied.db")
    config.broker = config.broker.model_copy(
        update={"trusted_proxies": [ipaddress.ip_network("127.0.0.0/8")]}
    )
    return broker_server(config, authenticator=fake_authenticator, providers=unreachable_providers)


def request_id_of(base_url: str, sent: str | None = None, path: str = "/api/v1/me") -> str:
    headers = {"X-Request-Id": sent} if sent is not None else {}
    return BrokerClient(base_url).get(path, headers=headers).headers["X-Request-Id"]


def test_each_response_gets_a_new_request_id(broker_url):
    first, second = request_id_of(broker_url), request_id_of(broker_url, path="/login")

    assert GENERATED.match(first) and GENERATED.match(second)
    assert first != second


def test_an_untrusted_client_cannot_choose_its_request_id(broker_url):
    assert request_id_of(broker_url, "chosen-by-client") != "chosen-by-client"


def test_a_trusted_proxy_request_id_is_kept_if_plain(trusting_broker_url):
    assert request_id_of(trusting_broker_url, "proxy-42.a:b") == "proxy-42.a:b"
    for bad in ("two words", "x" * 65, '"},{"level":"ERROR'):
        assert GENERATED.match(request_id_of(trusting_broker_url, bad)), bad


class JsonLines(logging.Handler):
    """Formats as the broker's process would with `[logging] format = "json"`, at the moment of logging."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines() -> Iterator[list[dict]]:
    handler, logger = JsonLines(), logging.getLogger("tornado.access")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_error_responses_and_their_log_lines_carry_the_request_id(broker_url, access_lines):
    response = BrokerClient(broker_url).get("/api/v1/no-such-endpoint")

    assert response.status == 404
    assert response.json()["error"]["reason"] == "not_found"
    request_id = response.headers["X-Request-Id"]

    def logged() -> list[dict]:
        return [line for line in access_lines if "/api/v1/no-such-endpoint" in line["message"]]

    # The access line is written after the response went out, on the broker's thread.
    wait_until(logged, 10, "the access log line")
    (line,) = logged()
    assert line["request_id"] == request_id
    assert line["level"] == "WARNING" and line["logger"] == "tornado.access"
