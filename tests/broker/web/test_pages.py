"""Portal pages: Korean and English, accessible structure, and the console page."""

import re

import pytest

from broker.db import Database
from broker.web.handlers.login import safe_next
from tests.fixtures.broker import BrokerClient, make_broker_config, seed_session


def title(html: str) -> str:
    return re.search(r"<title>(.*?)</title>", html, re.S).group(1).strip()


def test_root_sends_visitors_to_login_and_users_to_their_desktops(broker_url, client):
    assert BrokerClient(broker_url).get("/").headers["Location"] == "/login"
    assert client.get("/").headers["Location"] == "/desktops"


def test_login_page_is_korean_by_default(broker_url):
    html = BrokerClient(broker_url).get("/login").text
    assert '<html lang="ko">' in html
    assert title(html) == "스마트워크 VDI 로그인"
    assert 'hreflang="en"' in html


def test_login_page_follows_accept_language(broker_url):
    html = BrokerClient(broker_url).get("/login", headers={"Accept-Language": "en-US,en;q=0.9"}).text
    assert '<html lang="en">' in html
    assert title(html) == "Smart Work VDI sign in"


def test_lang_query_switches_and_is_remembered(broker_url):
    client = BrokerClient(broker_url)
    response = client.get("/login?lang=en&next=%2Fdesktops")
    assert title(response.text) == "Smart Work VDI sign in"
    assert client.cookie("lang").value == "en"
    assert "/login?next=%2Fdesktops&amp;lang=ko" in response.text  # the switcher keeps ?next=
    assert title(client.get("/login", headers={"Accept-Language": "ko"}).text) == "Smart Work VDI sign in"


def test_login_page_is_accessible(broker_url):
    html = BrokerClient(broker_url).get("/login").text
    assert 'class="skip-link" href="#main"' in html
    assert '<main id="main"' in html and "<header" in html and "<nav" in html
    for field in ("username", "password"):
        assert f'<label for="{field}">' in html
        assert f'id="{field}"' in html
    assert 'role="alert" aria-live="assertive"' in html
    assert '<button type="submit"' in html
    assert 'name="_xsrf"' in html


def test_pages_are_not_cached_and_not_framed(broker_url):
    headers = BrokerClient(broker_url).get("/login").headers
    assert headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "connect-src 'self' ws://127.0.0.1:9" in headers["Content-Security-Policy"]


def test_desktops_page_needs_login(broker_url):
    response = BrokerClient(broker_url).get("/desktops")
    assert response.status == 302
    assert response.headers["Location"] == "/login?next=%2Fdesktops"


def test_desktops_page_lists_entitled_pools_with_connect_buttons(client):
    html = client.get("/desktops").text
    assert "행정안전부 업무용 데스크톱" in html
    assert "기획재정부" not in html
    assert '<button type="button" class="primary connect" data-pool="mois-office"' in html
    assert 'data-state="none"' in html
    assert 'id="desktops-error" class="alert" role="alert"' in html
    assert "desktops.js" in html


def test_desktops_page_for_a_user_without_pools(broker_url):
    client = BrokerClient(broker_url)
    client.login("guest01")
    html = client.get("/desktops?lang=en").text
    assert "No desktops are assigned to you." in html
    assert '<button type="button" class="primary connect"' not in html
    assert "배정된 데스크톱이 없습니다" in client.get("/desktops?lang=ko").text


def test_console_page_shows_desktop_status_and_controls(client, broker_db):
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office")
    html = client.get(f"/console/{session_id}?lang=en").text
    assert title(html).startswith("행정안전부 업무용 데스크톱 remote desktop")
    assert 'id="desktop-name">vdi-mois-office-kimmj-' in html
    assert re.search(
        r'id="console-status" class="status" role="status" aria-live="polite"\s+data-state="connecting"', html
    )
    for button in ("disconnect", "logoff", "reconnect"):
        assert f'<button type="button" id="{button}"' in html
    assert f'data-session-id="{session_id}"' in html
    assert '"connected": "Connected"' in html
    assert "console.js" in html


def test_console_page_of_someone_else_is_404(broker_url, broker_db):
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office")
    other = BrokerClient(broker_url)
    other.login("choijw")
    assert other.get(f"/console/{session_id}").status == 404


def test_console_page_needs_login_and_comes_back_after_it(broker_url):
    response = BrokerClient(broker_url).get("/console/abc")
    assert response.headers["Location"] == "/login?next=%2Fconsole%2Fabc"


def test_novnc_modules_are_served(broker_url):
    response = BrokerClient(broker_url).get("/novnc/core/rfb.js")
    assert response.status == 200
    assert "javascript" in response.headers["Content-Type"]
    assert b"export default class RFB" in response.body


def test_health_and_metrics(broker_url):
    client = BrokerClient(broker_url)
    health = client.get("/healthz").json()
    # A lone broker takes every lease of the jobs it runs (here those a broker without pools has).
    assert health["status"] == "ok" and set(health["leads"]) <= {
        "rollout-manager",
        "console-token-purge",
        "seat-ends",
    }
    metrics = client.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert b'vdi_logins_total{method="password",result="success"}' in metrics.body


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/console/abc", "/console/abc"),
        ("/desktops?lang=en", "/desktops?lang=en"),
        (None, "/desktops"),
        ("https://evil.example/", "/desktops"),
        ("//evil.example/", "/desktops"),
        ("/\\evil.example", "/desktops"),
        ("javascript:alert(1)", "/desktops"),
    ],
)
def test_safe_next(value, expected):
    assert safe_next(value) == expected


def test_console_page_carries_a_watermark_only_where_the_pool_asks(
    broker_server, tmp_path, fake_authenticator
):
    config = make_broker_config(
        tmp_path / "broker.db",
        pools=[
            {"name": "mois-office", "display_name": "업무", "groups": ["mois"], "watermark": True},
            {"name": "mois-open", "display_name": "개방", "groups": ["mois"]},
        ],
    )
    url = broker_server(config, authenticator=fake_authenticator, providers={})
    client = BrokerClient(url)
    client.login("kimmj")
    db = Database(config.database)
    try:
        marked, _ = seed_session(db, "kimmj", "mois-office")
        plain, _ = seed_session(db, "kimmj", "mois-open")
    finally:
        db.close()
    html = client.get(f"/console/{marked}").text
    # Who and from where, over the screen, hidden from screen readers (it repeats across the screen).
    assert 'id="watermark" class="watermark" aria-hidden="true" data-text="kimmj · 127.0.0.1"' in html
    assert 'id="watermark"' not in client.get(f"/console/{plain}").text
