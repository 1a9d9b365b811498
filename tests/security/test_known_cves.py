"""The shapes of known vulnerabilities in products of this kind, each checked against this one.

Each test names the advisory whose shape it guards against; they held before the security review of
issue 11 and are kept here so that they keep holding.
"""

from __future__ import annotations

import pytest

from broker.db import Database
from sso.base import Identity
from tests.fixtures.broker import BrokerClient, make_broker_config, seed_session
from tests.fixtures.broker_api import signed_in
from tests.fixtures.gateway import RFB_BANNER, metric, read_close, receive_until, run_async, running_gateway

SCRIPT = '<script>alert("x")</script>'


def test_cve_2015_0259_cross_site_websocket_hijacking_is_refused(console_db, fake_vnc, gateway_config):
    """Nova CVE-2015-0259: a page on another site opens the console WebSocket with a token it obtained.
    The gateway refuses any Origin that is not the portal's, before the token is even looked at."""
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    refused_before = metric("vdi_gateway_tunnels_refused_total", reason="origin")

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            with pytest.raises(Exception):  # noqa: B017 - the handshake fails; its error type is Tornado's
                await gateway.connect(token, origin="https://evil.example")
            conn = await gateway.connect(token)  # the token was not spent by the refused attempt
            await receive_until(conn, RFB_BANNER)
            conn.close()
            await read_close(conn)

    run_async(scenario())
    assert metric("vdi_gateway_tunnels_refused_total", reason="origin") == refused_before + 1


def test_cve_2013_0335_no_console_token_for_another_users_desktop(broker_url, broker_db):
    """OpenStack CVE-2013-0335: a console token for a VM the user does not own. A session id of another
    user answers exactly like one that does not exist."""
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office")
    other = signed_in(broker_url, "choijw")
    stolen = other.post(f"/api/v1/sessions/{session_id}/console-token")
    missing = other.post("/api/v1/sessions/00000000-0000-0000-0000-000000000000/console-token")
    assert stolen.status == missing.status == 404
    assert stolen.json() == missing.json()


@pytest.mark.parametrize(
    "target", ["//evil.example/", "/\\evil.example", "https://evil.example/", "javascript:x"]
)
def test_cve_2021_3654_no_open_redirect_after_login(broker_url, target):
    """OpenStack CVE-2021-3654 (and CWE-601): `?next=` after sign-in leads only to a path on this site."""
    client = BrokerClient(broker_url)
    client.get("/login")
    response = client.request(
        "POST",
        f"/login?next={target}",
        body=f"username=kimmj&password=correct+horse+battery+staple&_xsrf={client.xsrf()}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status in (302, 303)
    location = response.headers["Location"]
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location


def test_cve_2017_18635_names_are_escaped_on_the_portal(broker_server, tmp_path, fake_authenticator):
    """noVNC CVE-2017-18635: a desktop or user name carrying markup ran as script in the console page.
    The user's display name and the pool's name reach the pages only as escaped text."""
    fake_authenticator.identities["kimmj"] = Identity(
        "kimmj", SCRIPT, "uid=kimmj,ou=people,dc=test", ["mois"]
    )
    config = make_broker_config(
        tmp_path / "broker.db",
        pools=[{"name": "mois-office", "display_name": f"업무 {SCRIPT}", "groups": ["mois"]}],
    )
    url = broker_server(config, authenticator=fake_authenticator, providers={})
    client = signed_in(url, "kimmj")
    db = Database(config.database)
    try:
        session_id, _ = seed_session(db, "kimmj", "mois-office")
    finally:
        db.close()
    for page in ("/desktops", f"/console/{session_id}"):
        html = client.get(page).text
        assert SCRIPT not in html, page
        assert "&lt;script&gt;" in html, page


def test_cve_2018_1340_session_cookie_flags(broker_url):
    """Guacamole CVE-2018-1340: the session cookie without Secure. Ours is HttpOnly and SameSite=Lax
    always, and Secure whenever the browser is on https (tests/security/test_web.py)."""
    response = BrokerClient(broker_url).login("kimmj")
    cookie = next(line for line in response.headers.get_all("Set-Cookie") if not line.startswith("_xsrf"))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
