"""Secrets in query strings never reach a log line (ARCHITECTURE principle 4)."""

import logging

import pytest

from broker.web.base import mask_uri
from tests.fixtures.broker import BrokerClient
from tests.fixtures.common import wait_until


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/console/abc", "/console/abc"),
        ("/ws?token=s3cr3t", "/ws?token=***"),
        ("/login?next=%2Fdesktops&password=hunter2", "/login?next=%2Fdesktops&password=***"),
        ("/x?access_token=a&_xsrf=b&lang=ko", "/x?access_token=***&_xsrf=***&lang=ko"),
        ("/x?%74oken=a", "/x?%74oken=***"),  # percent-encoded names are recognised
        ("/x?token", "/x?token"),  # no value, nothing to hide
        ("/x?lang=en&lang=ko", "/x?lang=en&lang=ko"),
    ],
)
def test_mask_uri(uri, expected):
    assert mask_uri(uri) == expected


def test_access_log_masks_token_and_password(broker_url, caplog):
    caplog.set_level(logging.DEBUG)
    client = BrokerClient(broker_url)
    client.get("/login?lang=en&token=tok-SECRET-1&password=pw-SECRET-2")
    client.post("/api/v1/sessions/abc/console-token?token=tok-SECRET-3", json={}, xsrf=False)

    def logged():
        return [r.getMessage() for r in caplog.records if r.name == "tornado.access"]

    wait_until(lambda: len(logged()) >= 2, 5, "two access log lines")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRET" not in text
    assert any("/login?lang=en&token=***&password=***" in line for line in logged())
