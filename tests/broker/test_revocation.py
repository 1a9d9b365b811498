"""Single sign-out across brokers, and the administrators' revoke API."""

from __future__ import annotations

from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from tests.fixtures.gateway import metric
from tests.fixtures.login_security import SourceClient, signed_in_from


def test_logout_on_one_broker_ends_the_users_sessions_on_every_broker(secure_broker, tmp_path):
    database = tmp_path / "shared.db"
    first, _ = secure_broker(database=database)
    second, _ = secure_broker(database=database)
    here, there = signed_in_from(first, "kimmj"), signed_in_from(second, "kimmj", "127.0.0.4")
    bystander = signed_in_from(second, "leesy")

    assert here.post("/api/v1/logout").status == 200

    assert there.get("/api/v1/me").status == 401
    assert bystander.get("/api/v1/me").status == 200


def test_a_non_administrator_gets_403(secure_broker):
    url, _ = secure_broker()
    victim = signed_in_from(url, "leesy")
    refused = signed_in_from(url, "kimmj").post("/api/v1/admin/users/leesy/revoke-sessions")
    assert refused.status == 403
    assert refused.json()["error"]["reason"] == "forbidden"
    assert victim.get("/api/v1/me").status == 200


def test_signed_out_callers_get_401(secure_broker):
    url, _ = secure_broker()
    assert SourceClient(url, "127.0.0.1").post("/api/v1/admin/users/leesy/revoke-sessions").status == 401


def test_an_administrator_revokes_every_session_of_a_user_and_it_is_audited(secure_broker):
    url, config = secure_broker()
    victim_a, victim_b = signed_in_from(url, "leesy"), signed_in_from(url, "leesy", "127.0.0.6")
    revoked_before = metric("vdi_sessions_revoked_total", cause="admin")

    answer = signed_in_from(url, "parkjh").post("/api/v1/admin/users/leesy/revoke-sessions")

    assert answer.status == 200
    assert answer.json() == {"username": "leesy", "revoked": {"portal_sessions": 2, "desktop_sessions": 0}}
    assert victim_a.get("/api/v1/me").status == 401 and victim_b.get("/api/v1/me").status == 401
    assert metric("vdi_sessions_revoked_total", cause="admin") == revoked_before + 2
    db = Database(config.database)
    with db.transaction() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "revoke_sessions")).one()
        assert (event.actor, event.target, event.detail["cause"]) == ("parkjh", "leesy", "admin")
    db.close()


def test_revoking_an_unknown_user_is_404_naming_the_field(secure_broker):
    url, _ = secure_broker()
    answer = signed_in_from(url, "parkjh").post("/api/v1/admin/users/nobody/revoke-sessions")
    assert answer.status == 404
    assert answer.json()["error"]["field"] == "username"


def test_a_session_signed_out_on_one_broker_gets_no_desktop_list_or_console_token_on_the_other(
    secure_broker, tmp_path
):
    # The desktop list and the console token read the portal session's user in their own transaction
    # (no transaction of its own before it): a revocation must still be seen by the very next request.
    database = tmp_path / "shared.db"
    first, _ = secure_broker(database=database)
    second, _ = secure_broker(database=database)
    here, there = signed_in_from(first, "kimmj"), signed_in_from(second, "kimmj", "127.0.0.4")
    assert there.get("/api/v1/desktops").status == 200
    unknown = there.post("/api/v1/sessions/no-such-session/console-token")
    assert unknown.status == 404  # signed in: the session id is what is wrong

    assert here.post("/api/v1/logout").status == 200

    listed = there.get("/api/v1/desktops")
    assert listed.status == 401 and listed.json()["error"]["reason"] == "not_authenticated"
    token = there.post("/api/v1/sessions/no-such-session/console-token")
    assert token.status == 401 and token.json()["error"]["reason"] == "not_authenticated"
    assert SourceClient(second, "127.0.0.5").get("/api/v1/desktops").status == 401  # no cookie at all
