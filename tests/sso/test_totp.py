"""TOTP second factor: policy by network, enrolment only inside a center, replay protection."""

from __future__ import annotations

import datetime as dt

import pyotp
import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import TotpCredential
from sso.totp import SecretBox, TotpError, new_secret, verify
from tests.fixtures.gateway import metric
from tests.fixtures.login_security import (
    CENTER_NETWORKS,
    INSIDE_CENTER,
    OUTSIDE,
    SourceClient,
    enrol,
    next_code,
    security_config,
    totp_of,
    wrong_code,
)
from vdi.config import ConfigError
from vdi.lab.slapd import DEMO_PASSWORD

POLICY = {"required_outside_centers": True, "center_networks": CENTER_NETWORKS}
NOW = dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC)


# -- the algorithm --------------------------------------------------------------------------------


def test_codes_within_one_step_pass_and_a_used_step_is_refused():
    secret = new_secret()
    app = pyotp.TOTP(secret)
    step = verify(secret, app.at(NOW), None, NOW)
    assert verify(secret, app.at(NOW + dt.timedelta(seconds=30)), step, NOW) == step + 1
    with pytest.raises(TotpError) as replay:
        verify(secret, app.at(NOW), step, NOW)
    assert replay.value.result == "replayed"
    with pytest.raises(TotpError):
        verify(secret, app.at(NOW + dt.timedelta(seconds=90)), None, NOW)


def test_secrets_are_encrypted_and_bound_to_their_user():
    box, secret = SecretBox("k" * 40), new_secret()
    sealed = box.seal("kimmj", secret)
    assert secret not in sealed
    assert box.open("kimmj", sealed) == secret
    with pytest.raises(TotpError):
        box.open("leesy", sealed)
    with pytest.raises(TotpError):
        SecretBox("x" * 40).open("kimmj", sealed)


# -- the broker with the real directory -----------------------------------------------------------


def test_no_totp_inside_a_center(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    assert SourceClient(url, INSIDE_CENTER).login("kimmj", DEMO_PASSWORD).status == 200


def test_outside_without_enrolment_is_refused_and_cannot_enrol_there(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    client = SourceClient(url, OUTSIDE)
    refused = client.login("leesy", DEMO_PASSWORD)
    assert refused.status == 403
    assert refused.json()["error"]["reason"] == "totp_enrolment_required"
    assert client.get("/api/v1/me").status == 401
    # Signed in at a center, the same user still cannot enrol from outside.
    inside = SourceClient(url, INSIDE_CENTER)
    inside.login("leesy", DEMO_PASSWORD)
    assert inside.post("/api/v1/totp/enrolment").status == 201
    same_browser_outside = SourceClient(url, OUTSIDE)
    for cookie in inside.jar:
        same_browser_outside.jar.set_cookie(cookie)
    assert same_browser_outside.get("/api/v1/me").status == 200
    refused_enrolment = same_browser_outside.post("/api/v1/totp/enrolment")
    assert refused_enrolment.status == 403
    assert refused_enrolment.json()["error"]["reason"] == "forbidden"


def test_outside_login_needs_the_code_then_opens_the_session(secure_broker):
    url, config = secure_broker(totp=POLICY)
    app = enrol(url, "parkjh")
    client = SourceClient(url, OUTSIDE)
    successes = metric("vdi_totp_verifications_total", result="success")

    first = client.login("parkjh", DEMO_PASSWORD)
    assert first.status == 401
    error = first.json()["error"]
    assert error["reason"] == "totp_required"
    assert client.get("/api/v1/me").status == 401  # a pending login is not a portal session

    wrong = client.post("/api/v1/login/totp", json={"pending": error["pending"], "code": wrong_code(app)})
    assert wrong.status == 401 and wrong.json()["error"]["reason"] == "invalid_totp"
    done = client.post("/api/v1/login/totp", json={"pending": error["pending"], "code": next_code(app)})
    assert done.status == 200, done.text
    assert client.get("/api/v1/me").json()["user"]["username"] == "parkjh"
    assert metric("vdi_totp_verifications_total", result="success") == successes + 1

    db = Database(config.database)
    with db.transaction() as s:
        stored = s.scalars(select(TotpCredential.secret_encrypted)).one()
    db.close()
    assert app.secret not in stored


def test_a_code_is_refused_when_reused_within_its_window(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    app = enrol(url, "chohy")
    code = next_code(app)
    first, second = SourceClient(url, OUTSIDE), SourceClient(url, OUTSIDE)
    replays = metric("vdi_totp_verifications_total", result="replayed")

    pending = first.login("chohy", DEMO_PASSWORD).json()["error"]["pending"]
    assert first.post("/api/v1/login/totp", json={"pending": pending, "code": code}).status == 200
    pending = second.login("chohy", DEMO_PASSWORD).json()["error"]["pending"]
    reused = second.post("/api/v1/login/totp", json={"pending": pending, "code": code})

    assert reused.status == 401
    assert reused.json()["error"]["reason"] == "invalid_totp"
    assert metric("vdi_totp_verifications_total", result="replayed") == replays + 1


def test_a_pending_login_is_bound_to_its_address_and_needs_a_valid_code_field(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    app = enrol(url, "yoonsh")
    pending = SourceClient(url, OUTSIDE).login("yoonsh", DEMO_PASSWORD).json()["error"]["pending"]
    elsewhere = SourceClient(url, "127.0.0.6")
    stolen = elsewhere.post("/api/v1/login/totp", json={"pending": pending, "code": next_code(app)})
    assert stolen.status == 401 and stolen.json()["error"]["reason"] == "login_expired"
    bad = elsewhere.post("/api/v1/login/totp", json={"pending": pending, "code": "12ab"})
    assert bad.status == 400 and bad.json()["error"]["field"] == "code"


def test_the_portal_form_asks_for_the_code_in_a_second_step(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    app = enrol(url, "jangwj")
    client = SourceClient(url, OUTSIDE)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    step = client.post("/login", body=f"username=jangwj&password={DEMO_PASSWORD}".encode(), headers=form)
    assert step.status == 200
    assert 'autocomplete="one-time-code"' in step.text
    pending = step.text.split('name="pending" value="')[1].split('"')[0]
    done = client.post("/login/totp", body=f"pending={pending}&code={next_code(app)}".encode(), headers=form)
    assert done.status == 303
    assert client.get("/api/v1/me").status == 200


def test_the_enrolment_page_registers_an_app_inside_a_center_only(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    inside = SourceClient(url, INSIDE_CENTER)
    inside.login("hanjy", DEMO_PASSWORD)
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    started = inside.post("/totp/enrol", body=b"", headers=form)
    assert started.status == 200
    uri = started.text.split('<code id="enrol-uri" aria-labelledby="enrol-uri-label">')[1].split("</code>")[0]
    app = totp_of(uri.replace("&amp;", "&"))
    assert 'id="enrol-qr" src="data:image/svg+xml' in started.text
    done = inside.post("/totp/enrol", body=f"code={app.now()}".encode(), headers=form)
    assert done.status == 200
    assert "Your authenticator app is registered." in done.text or "등록되었습니다" in done.text

    outside = SourceClient(url, OUTSIDE)
    for cookie in inside.jar:
        outside.jar.set_cookie(cookie)
    assert outside.post("/totp/enrol", body=b"", headers=form).status == 403


def test_wrong_codes_count_towards_the_user_lock(secure_broker):
    url, _ = secure_broker(totp=POLICY)
    app = enrol(url, "kangye")
    client = SourceClient(url, OUTSIDE)
    pending = client.login("kangye", DEMO_PASSWORD).json()["error"]["pending"]
    for _ in range(5):
        assert (
            client.post("/api/v1/login/totp", json={"pending": pending, "code": wrong_code(app)}).status
            == 401
        )
    locked = client.post("/api/v1/login/totp", json={"pending": pending, "code": next_code(app)})
    assert locked.status == 401 and locked.json()["error"]["reason"] == "invalid_credentials"


def test_a_bad_center_network_is_a_config_error_naming_the_key(tmp_path, ldap_settings):
    with pytest.raises(ConfigError, match=r"totp\.center_networks"):
        security_config(tmp_path / "x.db", ldap_settings, totp={"center_networks": ["10.0.0.0/33"]})
