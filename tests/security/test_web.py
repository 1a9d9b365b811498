"""Regression tests for the portal's web-layer findings of the security review (issue 11).

Each test is named after its finding and fails on the code before the fix.
"""

from __future__ import annotations

import re

import pytest

from tests.fixtures.broker import BrokerClient, make_broker_config
from tests.fixtures.login_security import SourceClient

PROXY = "127.0.0.9"  # the TLS-terminating proxy the broker trusts
ELSEWHERE = "127.0.0.10"  # any other client on the network


def language_link(body: bytes) -> str:
    match = re.search(rb'href="([^"]*lang=(?:en|ko)[^"]*)"', body)
    assert match, "the page has a language switch"
    return match.group(1).decode().replace("&amp;", "&")


@pytest.mark.parametrize("path", ["//evil.example/x", "/\\evil.example/x", "///evil.example"])
def test_finding_2_the_404_language_link_stays_on_this_site(broker_url, path):
    """Link injection on the 404 page (the shape of OpenStack's CVE-2021-3654): a path starting with `//` or
    `/\\` must not become a protocol-relative link to another host."""
    response = BrokerClient(broker_url).get(path)
    assert response.status == 404
    link = language_link(response.body)
    assert link.startswith("/") and not link.startswith(("//", "/\\")), link
    assert "\\" not in link


@pytest.fixture
def proxied(broker_server, tmp_path, fake_authenticator):
    """A broker that trusts PROXY's forwarded headers, as behind a TLS-terminating load balancer."""
    config = make_broker_config(
        tmp_path / "broker.db",
        broker={
            "cookie_secret": "cookie-flags-tests-cookie-secret-0123456789",
            "gateway_url": "wss://127.0.0.1:9/ws",
            "trusted_proxies": [f"{PROXY}/32"],
        },
    )
    return broker_server(config, authenticator=fake_authenticator, providers={})


def set_cookies(response) -> dict[str, str]:
    return {line.split("=", 1)[0]: line for line in response.headers.get_all("Set-Cookie") or []}


def test_finding_4_cookies_are_secure_and_hsts_is_sent_behind_a_tls_proxy(proxied):
    """Cookie flags (as Guacamole's CVE-2018-1340): a browser that reached the portal over https through a
    trusted proxy gets Secure on the session and _xsrf cookies and an HSTS header."""
    client = SourceClient(proxied, PROXY)
    https = {"X-Forwarded-Proto": "https"}
    page = client.get("/login", headers=https)
    assert "; Secure" in set_cookies(page)["_xsrf"]
    assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    # The test talks plain http to the broker, so its cookie jar keeps Secure cookies to itself: send the
    # XSRF pair by hand, as the browser on the https side would.
    xsrf = set_cookies(page)["_xsrf"].split(";", 1)[0].split("=", 1)[1]
    login = client.request(
        "POST",
        "/api/v1/login",
        json={"username": "kimmj", "password": "correct horse battery staple"},
        headers={**https, "Cookie": f"_xsrf={xsrf}", "X-XSRFToken": xsrf},
        xsrf=False,
    )
    assert login.status == 200
    session_cookie = next(v for k, v in set_cookies(login).items() if k not in ("_xsrf", "lang"))
    assert "; Secure" in session_cookie and "; HttpOnly" in session_cookie


def test_finding_4_a_forwarded_proto_from_an_untrusted_client_changes_nothing(proxied):
    """Only a trusted proxy says what scheme the browser used; anyone else's header is ignored."""
    page = SourceClient(proxied, ELSEWHERE).get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "; Secure" not in set_cookies(page)["_xsrf"]
    assert "Strict-Transport-Security" not in page.headers
