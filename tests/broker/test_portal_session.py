"""Portal sessions: signed HttpOnly cookie, only a hash at rest, a fresh id at every login,
revocation at logout, expiry, and XSRF protection on every POST."""

import datetime as dt
import hashlib

from sqlalchemy import select, update
from tornado.web import decode_signed_value

from broker.auth import SESSION_COOKIE
from broker.db.models import AuditEvent, PortalSession, User
from tests.fixtures.broker import COOKIE_SECRET, BrokerClient


def session_cookie_header(response) -> str:
    return next(c for c in response.cookies() if c.startswith(f"{SESSION_COOKIE}="))


def session_id_of(client: BrokerClient) -> str:
    cookie = client.cookie(SESSION_COOKIE)
    return decode_signed_value(COOKIE_SECRET, SESSION_COOKIE, cookie.value.strip('"')).decode()


def test_login_sets_httponly_samesite_lax_cookie_not_secure_over_http(broker_url):
    header = session_cookie_header(BrokerClient(broker_url).login("kimmj"))
    flags = [part.strip().lower() for part in header.split(";")[1:]]
    assert "httponly" in flags
    assert "samesite=lax" in flags
    assert "path=/" in flags
    assert "secure" not in flags
    # No Expires/Max-Age: the cookie ends with the browser (shared terminals).
    assert not any(flag.startswith(("expires", "max-age")) for flag in flags)


def test_only_the_hash_of_the_session_id_is_stored(broker_url, broker_db):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    session_id = session_id_of(client)
    with broker_db.transaction() as db:
        hashes = db.scalars(select(PortalSession.id_hash)).all()
    assert hashes == [hashlib.sha256(session_id.encode()).hexdigest()]
    assert len(session_id) >= 43  # 32 random bytes


def test_each_login_gets_a_new_session_id_and_retires_the_old_one(broker_url):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    first = client.cookie(SESSION_COOKIE).value
    client.login("kimmj")
    second = client.cookie(SESSION_COOKIE).value
    assert first != second
    replay = BrokerClient(broker_url)
    replay.jar.set_cookie(_copy_cookie(client, first))
    assert replay.get("/api/v1/me").status == 401
    assert client.get("/api/v1/me").json()["user"]["username"] == "kimmj"


def test_a_planted_cookie_is_replaced_at_login(broker_url):
    """Session fixation: whatever id the browser held before login, it gets a new one."""
    victim = BrokerClient(broker_url)
    victim.get("/login")
    victim.jar.set_cookie(_copy_cookie(victim, '"planted"', name=SESSION_COOKIE))
    victim.login("kimmj")
    assert victim.cookie(SESSION_COOKIE).value != '"planted"'
    assert victim.get("/api/v1/me").status == 200


def test_logout_revokes_the_session_and_clears_the_cookie(broker_url, broker_db):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    stolen = client.cookie(SESSION_COOKIE).value
    response = client.post("/api/v1/logout")
    assert response.status == 200
    assert any(c.startswith(f"{SESSION_COOKIE}=;") or f'{SESSION_COOKIE}=""' in c for c in response.cookies())
    replay = BrokerClient(broker_url)
    replay.jar.set_cookie(_copy_cookie(client, stolen, name=SESSION_COOKIE))
    assert replay.get("/api/v1/me").status == 401
    with broker_db.transaction() as db:
        assert db.scalars(select(PortalSession.revoked_at)).one() is not None
        assert db.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all() == ["login", "logout"]


def test_expired_session_is_not_accepted(broker_url, broker_db):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    with broker_db.transaction() as db:
        db.execute(update(PortalSession).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    assert client.get("/api/v1/me").status == 401
    assert client.get("/desktops").status == 302


def test_login_refreshes_the_cached_user(broker_url, broker_db, fake_authenticator):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    identity = fake_authenticator.identities["kimmj"]
    fake_authenticator.identities["kimmj"] = type(identity)(
        "kimmj", "김민준 사무관", identity.dn, ["mois", "msit"]
    )
    client.login("kimmj")
    with broker_db.transaction() as db:
        user = db.get(User, "kimmj")
        assert (user.display_name, user.groups) == ("김민준 사무관", ["mois", "msit"])
        assert user.last_login_at is not None


def test_post_without_xsrf_token_is_refused(broker_url):
    client = BrokerClient(broker_url)
    response = client.post("/api/v1/login", json={"username": "kimmj", "password": "x"}, xsrf=False)
    assert response.status == 403
    assert response.json()["error"]["reason"] == "xsrf_failed"
    assert client.cookie(SESSION_COOKIE) is None


def test_post_with_a_forged_xsrf_token_is_refused(broker_url):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    response = client.post("/api/v1/pools/mois-office/connect", headers={"X-XSRFToken": "forged"}, xsrf=False)
    assert response.status == 403


def test_logout_form_without_xsrf_is_refused_and_keeps_the_session(broker_url):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    response = client.post("/logout", body=b"", xsrf=False)
    assert response.status == 403
    assert "<html" in response.text
    assert client.get("/api/v1/me").status == 200


def test_form_login_redirects_to_a_local_next_only(broker_url):
    client = BrokerClient(broker_url)
    xsrf = client.xsrf()
    form = f"_xsrf={xsrf}&username=kimmj&password=correct+horse+battery+staple".encode()
    response = client.post("/login?next=/console/abc", body=form, xsrf=False)
    assert (response.status, response.headers["Location"]) == (303, "/console/abc")
    response = client.post("/login?next=//evil.example/", body=form, xsrf=False)
    assert response.headers["Location"] == "/desktops"


def test_form_login_failure_rerenders_the_form_with_an_alert(broker_url):
    client = BrokerClient(broker_url)
    form = f"_xsrf={client.xsrf()}&username=kimmj&password=wrong".encode()
    response = client.post("/login", body=form, xsrf=False, headers={"Accept-Language": "en"})
    assert response.status == 401
    assert 'role="alert"' in response.text
    assert "The user name or password is incorrect." in response.text
    assert 'value="kimmj"' in response.text
    assert 'value="wrong"' not in response.text  # the password is never echoed back
    assert client.cookie(SESSION_COOKIE) is None


def test_form_logout_redirects_to_login(broker_url):
    client = BrokerClient(broker_url)
    client.login("kimmj")
    response = client.post("/logout", body=f"_xsrf={client.xsrf()}".encode(), xsrf=False)
    assert (response.status, response.headers["Location"]) == (303, "/login")
    assert client.get("/api/v1/me").status == 401


def _copy_cookie(client: BrokerClient, value: str, name: str = SESSION_COOKIE):
    """A cookie for the same site with another value, as a thief or an attacker would hold."""
    import copy

    template = copy.copy(client.cookie("_xsrf") or client.cookie(SESSION_COOKIE))
    template.name, template.value = name, value
    return template
