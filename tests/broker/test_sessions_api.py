"""Sessions: state, console tokens (owner only, body only, single use) and logoff.

Desktops here are database rows standing for running desktops; what the driver does with
real ones is covered by the end-to-end tests against libvirtd.
"""

import logging

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from broker.db.models import ConsoleToken, Desktop, DesktopSession
from broker.db.tokens import consume_token, hash_token
from tests.fixtures.broker import BrokerClient, seed_session


@pytest.fixture
def running(client, broker_db) -> tuple[str, int]:
    return seed_session(broker_db, "kimmj", "mois-office", vnc_port=5907)


def test_session_state_for_its_owner(client, running):
    session_id, desktop_id = running
    response = client.get(f"/api/v1/sessions/{session_id}")
    assert response.status == 200
    body = response.json()
    assert (body["session_id"], body["state"], body["console_url"]) == (
        session_id,
        "active",
        f"/console/{session_id}",
    )
    assert body["desktop"]["id"] == desktop_id
    assert body["desktop"]["state"] == "running"
    assert body["started_at"].endswith("+00:00")


def test_desktops_shows_the_running_desktop_and_its_session(client, running):
    session_id, desktop_id = running
    (pool,) = client.get("/api/v1/desktops").json()["pools"]
    assert (pool["state"], pool["session_id"], pool["desktop"]["id"]) == ("running", session_id, desktop_id)


def test_console_token_is_in_the_body_only_and_opens_the_desktop_once(client, running, broker_db, caplog):
    caplog.set_level(logging.DEBUG)
    session_id, desktop_id = running
    before = REGISTRY.get_sample_value("vdi_console_tokens_issued_total") or 0
    response = client.post(f"/api/v1/sessions/{session_id}/console-token")
    assert response.status == 200
    grant = response.json()
    assert set(grant) == {"token", "gateway_url", "expires_in"}
    # The URL names the request that issued the token, so the gateway's lines carry its id (docs/logging.md).
    request_id = response.headers["X-Request-Id"]
    assert (grant["gateway_url"], grant["expires_in"]) == (f"ws://127.0.0.1:9/ws?rid={request_id}", 30)
    assert response.headers["Cache-Control"] == "no-store"
    assert REGISTRY.get_sample_value("vdi_console_tokens_issued_total") == before + 1
    token = grant["token"]
    assert token not in caplog.text
    with broker_db.transaction() as db:
        assert db.get(ConsoleToken, hash_token(token)).target_port == 5907
        target = consume_token(db, token)
    assert (target.session_id, target.desktop_id, target.port) == (session_id, desktop_id, 5907)


def test_each_console_token_is_new(client, running):
    session_id, _ = running
    first = client.post(f"/api/v1/sessions/{session_id}/console-token").json()["token"]
    second = client.post(f"/api/v1/sessions/{session_id}/console-token").json()["token"]
    assert first != second


def test_other_users_session_looks_missing(broker_url, running):
    session_id, _ = running
    other = BrokerClient(broker_url)
    other.login("choijw")
    for response in (
        other.post(f"/api/v1/sessions/{session_id}/console-token"),
        other.get(f"/api/v1/sessions/{session_id}"),
        other.post(f"/api/v1/sessions/{session_id}/logoff"),
    ):
        assert response.status == 404
        assert response.json()["error"]["reason"] == "unknown_session"


def test_console_token_for_unknown_session_is_404(client):
    assert client.post("/api/v1/sessions/does-not-exist/console-token").status == 404


def test_no_console_token_for_an_ended_session(client, running, broker_db):
    session_id, _ = running
    with broker_db.transaction() as db:
        db.execute(update(DesktopSession).values(state="ended"))
    response = client.post(f"/api/v1/sessions/{session_id}/console-token")
    assert (response.status, response.json()["error"]["reason"]) == (409, "session_ended")


def test_no_console_token_while_the_desktop_is_not_running(client, broker_db):
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office", state="provisioning")
    response = client.post(f"/api/v1/sessions/{session_id}/console-token")
    assert (response.status, response.json()["error"]["reason"]) == (409, "desktop_not_running")


def test_logoff_on_unreachable_host_is_503_and_keeps_the_session(
    client, running, broker_db, unreachable_providers
):
    session_id, desktop_id = running
    response = client.post(f"/api/v1/sessions/{session_id}/logoff")
    assert response.status == 503
    assert "host local" in response.json()["error"]["message"]
    assert unreachable_providers["local"].calls == ["destroy_desktop"]
    with broker_db.transaction() as db:
        assert db.get(DesktopSession, session_id).state == "active"
        assert db.get(Desktop, desktop_id).state == "running"


def test_logoff_of_an_ended_session_does_not_touch_the_host(
    client, running, broker_db, unreachable_providers
):
    session_id, _ = running
    with broker_db.transaction() as db:
        db.execute(update(DesktopSession).values(state="ended"))
    response = client.post(f"/api/v1/sessions/{session_id}/logoff")
    assert (response.status, response.json()["state"]) == (200, "ended")
    assert unreachable_providers["local"].calls == []


def test_reconnect_checks_the_hypervisor_before_reusing_a_desktop(client, running, unreachable_providers):
    response = client.post("/api/v1/pools/mois-office/connect")
    assert response.status == 503
    assert unreachable_providers["local"].calls == ["desktop_state"]


def test_a_desktop_still_starting_is_409(client, broker_db):
    seed_session(broker_db, "kimmj", "mois-office", state="provisioning")
    response = client.post("/api/v1/pools/mois-office/connect")
    assert (response.status, response.json()["error"]["reason"]) == (409, "desktop_starting")


def test_tokens_are_only_stored_hashed(client, running, broker_db):
    session_id, _ = running
    token = client.post(f"/api/v1/sessions/{session_id}/console-token").json()["token"]
    with broker_db.transaction() as db:
        stored = db.scalars(select(ConsoleToken.token_hash)).all()
    assert stored == [hash_token(token)]
