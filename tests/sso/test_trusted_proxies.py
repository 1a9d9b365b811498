"""X-Forwarded-For: believed only from broker.trusted_proxies, against the real broker and the real slapd.

The client address decides the per-source lock and the TOTP center exemption, so a client that forges the
header must gain neither; behind a trusted proxy the reported address is what lockout, policy and audit use.
"""

from __future__ import annotations

import ipaddress
import logging

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from broker.web.client_address import client_address
from tests.fixtures.gateway import metric
from tests.fixtures.login_security import CENTER_NETWORKS, OUTSIDE, SourceClient, security_config
from vdi.lab.slapd import DEMO_PASSWORD

PROXY = "127.0.0.9"  # outside CENTER_NETWORKS (127.0.0.0/30)
INSIDE = "127.0.0.2"
REMOTE = "198.51.100.7"  # a home user's address, as the proxy saw it
WRONG = "not-the-password"
TOTP_POLICY = {"required_outside_centers": True, "center_networks": CENTER_NETWORKS}
TRUSTED = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("127.0.0.9/32")]


@pytest.fixture
def proxied_broker(broker_server, tmp_path, ldap_settings):
    """`start(lockout=…, totp=…) -> (url, config)`: a real broker that trusts PROXY's X-Forwarded-For."""

    def start(*, lockout: dict | None = None, totp: dict | None = None):
        config = security_config(tmp_path / "broker.db", ldap_settings, lockout=lockout, totp=totp)
        config.broker = config.broker.model_copy(update={"trusted_proxies": [ipaddress.ip_network(PROXY)]})
        return broker_server(config, providers={}), config

    return start


def login(client: SourceClient, username: str, password: str, forwarded_for: str):
    return client.post(
        "/api/v1/login",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": forwarded_for},
    )


def audit_sources(config, username: str) -> list[tuple[str, str]]:
    db = Database(config.database)
    try:
        with db.transaction() as s:
            rows = s.scalars(select(AuditEvent).where(AuditEvent.actor == username).order_by(AuditEvent.id))
            return [(row.source_ip, row.detail.get("reason", "")) for row in rows]
    finally:
        db.close()


# -- the rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("127.0.0.9", None, "127.0.0.9"),
        ("127.0.0.9", "198.51.100.7", "198.51.100.7"),
        ("127.0.0.9", " 2001:db8::1 ", "2001:db8::1"),
        # The client wrote the left part; the proxy appended what it saw.
        ("127.0.0.9", "127.0.0.2, 198.51.100.7", "198.51.100.7"),
        # Two trusted hops: skip them, take the first address no trusted proxy owns.
        ("127.0.0.9", "203.0.113.5, 198.51.100.7, 10.0.0.4", "198.51.100.7"),
        ("127.0.0.9", "10.0.0.3, 10.0.0.4", "10.0.0.3"),
        # Garbage where the client's address should be: the header is ignored.
        ("127.0.0.9", "unknown", "127.0.0.9"),
        ("127.0.0.9", "198.51.100.7:4431", "127.0.0.9"),
        ("127.0.0.9", "", "127.0.0.9"),
        # Garbage left of the real address is the client's own writing and changes nothing.
        ("127.0.0.9", "<script>, 198.51.100.7", "198.51.100.7"),
        # From anyone else the header is never believed.
        ("127.0.0.5", "127.0.0.2", "127.0.0.5"),
    ],
)
def test_the_client_is_the_right_most_address_no_trusted_proxy_owns(peer, header, expected):
    assert client_address(peer, header, TRUSTED) == expected


def test_garbage_from_a_trusted_proxy_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="broker.web.client_address"):
        assert client_address(PROXY, "1.2.3.4, not-an-ip", TRUSTED) == PROXY
    assert "ignored malformed X-Forwarded-For from trusted proxy 127.0.0.9: entry 'not-an-ip'" in caplog.text


# -- against the broker ---------------------------------------------------------------------------


def test_a_forged_header_does_not_escape_the_source_lock(proxied_broker):
    url, config = proxied_broker(lockout={"source_max_failures": 3, "lock_s": 120})
    guesser = SourceClient(url, OUTSIDE)  # not a trusted proxy
    ignored_before = metric("vdi_forwarded_for_ignored_total", reason="untrusted_peer")
    statuses = [
        login(guesser, name, WRONG, f"203.0.113.{i}").status for i, name in enumerate(("a", "b", "c"))
    ]
    assert statuses == [401, 401, 401]

    refused = login(guesser, "chohy", DEMO_PASSWORD, "203.0.113.99")
    assert refused.status == 429
    assert audit_sources(config, "chohy") == [(OUTSIDE, "source address locked")]
    assert metric("vdi_forwarded_for_ignored_total", reason="untrusted_peer") >= ignored_before + 4


def test_a_forged_header_does_not_unlock_the_center_exemption(proxied_broker):
    url, config = proxied_broker(totp=TOTP_POLICY)
    refused = login(SourceClient(url, OUTSIDE), "leesy", DEMO_PASSWORD, INSIDE)
    assert refused.status == 403
    assert refused.json()["error"]["reason"] == "totp_enrolment_required"
    assert audit_sources(config, "leesy")[-1][0] == OUTSIDE


def test_behind_a_trusted_proxy_the_reported_address_decides_and_is_audited(proxied_broker):
    url, config = proxied_broker(totp=TOTP_POLICY)
    proxy = SourceClient(url, PROXY)

    # A user at a center, reaching the broker through the proxy: no second factor asked.
    assert login(proxy, "kimmj", DEMO_PASSWORD, INSIDE).status == 200
    assert audit_sources(config, "kimmj")[-1] == (INSIDE, "authenticated")

    # A home user through the same proxy, whatever they wrote left of the proxy's entry.
    refused = login(SourceClient(url, PROXY), "leesy", DEMO_PASSWORD, f"{INSIDE}, {REMOTE}")
    assert refused.status == 403
    assert audit_sources(config, "leesy")[-1][0] == REMOTE


def test_behind_a_trusted_proxy_each_client_has_its_own_source_lock(proxied_broker):
    url, config = proxied_broker(lockout={"source_max_failures": 3, "lock_s": 120})
    proxy = SourceClient(url, PROXY)
    assert [login(proxy, name, WRONG, REMOTE).status for name in ("a", "b", "c")] == [401] * 3

    assert login(proxy, "chohy", DEMO_PASSWORD, REMOTE).status == 429
    assert audit_sources(config, "chohy") == [(REMOTE, "source address locked")]
    # The proxy's other clients are not locked with the guesser.
    assert login(proxy, "jangwj", DEMO_PASSWORD, "198.51.100.8").status == 200
    assert audit_sources(config, "jangwj") == [("198.51.100.8", "authenticated")]


def test_garbage_from_the_trusted_proxy_falls_back_to_the_proxy_address(proxied_broker, caplog):
    url, config = proxied_broker()
    malformed_before = metric("vdi_forwarded_for_ignored_total", reason="malformed")
    with caplog.at_level(logging.WARNING, logger="broker.web.client_address"):
        assert login(SourceClient(url, PROXY), "yoonsh", DEMO_PASSWORD, "not-an-address").status == 200
    assert audit_sources(config, "yoonsh") == [(PROXY, "authenticated")]
    assert "ignored malformed X-Forwarded-For from trusted proxy 127.0.0.9" in caplog.text
    assert metric("vdi_forwarded_for_ignored_total", reason="malformed") > malformed_before
