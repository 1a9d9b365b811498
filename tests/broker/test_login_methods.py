"""Login methods chosen by name: a method registered by a plugin and enabled in config serves the portal,
meets the same lockout and audit as password login, and the second factor wraps it when policy says so."""

from __future__ import annotations

import time

import pyotp
import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent, PortalSession
from tests.fixtures.broker import PASSWORD, BrokerClient, make_broker_config
from tests.fixtures.gateway import metric
from tests.fixtures.login_methods import BLOCKED, PASSPHRASE
from tests.fixtures.login_security import CENTER_NETWORKS, INSIDE_CENTER, OUTSIDE, SourceClient, totp_of

GENERIC = "The user name or password is incorrect."


def next_code(app: pyotp.TOTP) -> str:
    """The next time step's code: inside the window, and later than the step enrolment used."""
    return app.at(time.time() + 30)


def passphrase_login(client: BrokerClient, username: str, passphrase: str = PASSPHRASE):
    return client.post("/api/v1/login/passphrase", json={"username": username, "passphrase": passphrase})


@pytest.fixture
def start(tmp_path, broker_server, fake_authenticator, unreachable_providers):
    """`start(login_methods=…, totp=…) -> (base URL, database)`: the broker with fake directory and host."""
    opened: list[Database] = []

    def start_broker(login_methods: list[str], **sections):
        broker = {"cookie_secret": "login-methods-tests-" + "0" * 32, "login_methods": login_methods}
        config = make_broker_config(tmp_path / "broker.db", broker=broker, **sections)
        url = broker_server(config, authenticator=fake_authenticator, providers=unreachable_providers)
        opened.append(Database(config.database))
        return url, opened[-1]

    yield start_broker
    for db in opened:
        db.close()


def login_audits(db: Database) -> list[tuple[str, str, dict]]:
    with db.transaction() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "login").order_by(AuditEvent.id))
        return [(row.actor, row.result, dict(row.detail)) for row in rows]


def session_methods(db: Database) -> list[str]:
    with db.transaction() as session:
        return list(session.scalars(select(PortalSession.method).order_by(PortalSession.created_at)))


def test_a_registered_method_enabled_in_config_signs_users_in(start, passphrase_method):
    url, db = start(["password", "passphrase"])
    before = metric("vdi_logins_total", method="passphrase", result="success")
    client = BrokerClient(url)
    response = passphrase_login(client, "kimmj")
    assert response.status == 200, response.text
    assert client.get("/api/v1/me").json()["user"]["username"] == "kimmj"
    assert client.get("/api/v1/desktops").status == 200
    actor, result, detail = login_audits(db)[-1]
    assert (actor, result) == ("kimmj", "success")
    assert detail == {"checked_by": "toy passphrase list", "method": "passphrase", "reason": "authenticated"}
    assert session_methods(db) == ["passphrase"]
    assert metric("vdi_logins_total", method="passphrase", result="success") == before + 1
    # Password login is still there beside it.
    assert BrokerClient(url).login("choijw", PASSWORD).status == 200


def test_a_registered_method_not_enabled_has_no_route(start, passphrase_method):
    url, _db = start(["password"])
    assert passphrase_login(BrokerClient(url), "kimmj").status == 404


def test_password_login_can_be_switched_off(start, passphrase_method):
    url, _db = start(["passphrase"])
    client = BrokerClient(url)
    assert client.login("kimmj", PASSWORD).status == 404
    assert 'name="password"' not in client.get("/login").text
    assert passphrase_login(client, "kimmj").status == 200


def test_unknown_user_wrong_secret_and_blocked_user_get_one_answer(start, passphrase_method):
    url, db = start(["password", "passphrase"])
    answers = [
        passphrase_login(BrokerClient(url), "nosuchuser"),
        passphrase_login(BrokerClient(url), "kimmj", "wrong"),
        passphrase_login(BrokerClient(url), BLOCKED),
    ]
    assert {(a.status, a.json()["error"]["message"]) for a in answers} == {(401, GENERIC)}
    reasons = [detail["reason"] for _actor, _result, detail in login_audits(db)]
    assert reasons[-1] == "passphrase login of 'guest01' refused: user is blocked"


def test_refusals_of_any_guessable_method_meet_the_same_lock(start, passphrase_method):
    url, _db = start(["password", "passphrase"], lockout={"user_max_failures": 2})
    for _ in range(2):
        assert passphrase_login(BrokerClient(url), "kimmj", "wrong").status == 401
    # The lock is the user name's, whichever method guessed: the right password is refused too, alike.
    locked = BrokerClient(url).login("kimmj", PASSWORD)
    assert (locked.status, locked.json()["error"]["message"]) == (401, GENERIC)


def test_the_second_factor_wraps_a_method_the_policy_names(start, passphrase_method):
    totp = {"required_outside_centers": True, "center_networks": CENTER_NETWORKS, "methods": ["passphrase"]}
    url, db = start(["password", "passphrase"], totp=totp)
    inside = SourceClient(url, INSIDE_CENTER)
    assert passphrase_login(inside, "kimmj").status == 200  # inside a center: no code asked
    app = totp_of(inside.post("/api/v1/totp/enrolment").json()["otpauth_uri"])
    assert inside.post("/api/v1/totp/enrolment/confirm", json={"code": app.now()}).status == 200

    outside = SourceClient(url, OUTSIDE)
    waiting = passphrase_login(outside, "kimmj")
    assert waiting.json()["error"]["reason"] == "totp_required"
    assert login_audits(db)[-1][2]["reason"] == "passphrase ok; TOTP code required"
    pending = waiting.json()["error"]["pending"]
    done = outside.post("/api/v1/login/totp", json={"pending": pending, "code": next_code(app)})
    assert done.status == 200, done.text
    assert session_methods(db)[-1] == "passphrase+totp"
    # Password is not in [totp] methods here: it goes straight in from outside.
    assert SourceClient(url, OUTSIDE).login("choijw", PASSWORD).status == 200


def test_a_method_outside_the_policy_needs_no_enrolment(start, passphrase_method):
    totp = {"required_outside_centers": True, "center_networks": CENTER_NETWORKS}
    url, _db = start(["password", "passphrase"], totp=totp)
    assert passphrase_login(SourceClient(url, OUTSIDE), "kimmj").status == 200
    # The default policy still holds password logins from outside to a second factor.
    refused = SourceClient(url, OUTSIDE).login("kimmj", PASSWORD)
    assert refused.json()["error"]["reason"] == "totp_enrolment_required"
