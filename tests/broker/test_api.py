"""The REST API: login, validation, errors as JSON, and the connect paths that fail before a
desktop runs (unknown pool, not entitled, host unreachable, no capacity)."""

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db.models import AuditEvent, Desktop, DesktopSession
from tests.fixtures.broker import PASSWORD, BrokerClient, make_broker_config


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def audit_rows(db, action: str) -> list[AuditEvent]:
    with db.transaction() as session:
        return session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()


# -- login ----------------------------------------------------------------------------------------


def test_login_returns_the_user_and_is_audited(broker_url, broker_db):
    before = metric("vdi_logins_total", method="password", result="success")
    response = BrokerClient(broker_url).login("kimmj")
    assert response.status == 200
    assert response.json() == {"user": {"username": "kimmj", "display_name": "김민준", "groups": ["mois"]}}
    assert metric("vdi_logins_total", method="password", result="success") == before + 1
    (event,) = audit_rows(broker_db, "login")
    assert (event.actor, event.result, event.source_ip) == ("kimmj", "success", "127.0.0.1")
    assert event.detail["method"] == "password"


def test_wrong_password_is_401_audited_without_the_password(broker_url, broker_db, caplog):
    before = metric("vdi_logins_total", method="password", result="failure")
    response = BrokerClient(broker_url).login("kimmj", "pw-WRONG-123")
    assert response.status == 401
    assert response.json()["error"] == {
        "reason": "invalid_credentials",
        "message": "The user name or password is incorrect.",
    }
    assert metric("vdi_logins_total", method="password", result="failure") == before + 1
    (event,) = audit_rows(broker_db, "login")
    assert (event.actor, event.result, event.detail["reason"]) == ("kimmj", "failure", "wrong password")
    assert "pw-WRONG-123" not in str(event.detail)
    assert "pw-WRONG-123" not in caplog.text


def test_directory_down_is_503_and_counted_as_error(broker_url, fake_authenticator):
    fake_authenticator.directory_down = True
    before = metric("vdi_logins_total", method="password", result="error")
    response = BrokerClient(broker_url).login("kimmj")
    assert response.status == 503
    assert response.json()["error"]["reason"] == "directory_unavailable"
    assert metric("vdi_logins_total", method="password", result="error") == before + 1


def test_me_needs_a_login(broker_url):
    response = BrokerClient(broker_url).get("/api/v1/me")
    assert response.status == 401
    assert response.json()["error"]["reason"] == "not_authenticated"


def test_me_returns_the_user(client):
    assert client.get("/api/v1/me").json()["user"]["username"] == "kimmj"


# -- body validation ------------------------------------------------------------------------------


def test_malformed_json_is_400(broker_url):
    response = BrokerClient(broker_url).post("/api/v1/login", body=b'{"username": "kimmj",')
    assert response.status == 400
    error = response.json()["error"]
    assert error["reason"] == "invalid_json"
    assert "line 1" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "kimmj"}, "password"),
        ({"password": PASSWORD}, "username"),
        ({"username": 5, "password": PASSWORD}, "username"),
        ({"username": "", "password": PASSWORD}, "username"),
        ({"username": "kimmj", "password": PASSWORD, "remember": True}, "remember"),
    ],
)
def test_invalid_field_is_400_naming_the_field(broker_url, body, field):
    response = BrokerClient(broker_url).post("/api/v1/login", json=body)
    assert response.status == 400
    error = response.json()["error"]
    assert (error["reason"], error["field"]) == ("invalid_field", field)
    assert error["message"].startswith(f"{field}: ")


def test_body_that_is_not_an_object_is_400(broker_url):
    response = BrokerClient(broker_url).post("/api/v1/login", json=["kimmj", PASSWORD])
    assert response.status == 400
    assert response.json()["error"]["reason"] == "invalid_field"


def test_validation_error_never_echoes_the_password(broker_url):
    response = BrokerClient(broker_url).post("/api/v1/login", json={"username": 5, "password": "pw-SECRET"})
    assert "pw-SECRET" not in response.text


# -- listing --------------------------------------------------------------------------------------


def test_desktops_lists_only_entitled_pools(client):
    response = client.get("/api/v1/desktops")
    assert response.status == 200
    assert response.json() == {
        "pools": [
            {
                "name": "mois-office",
                "display_name": "행정안전부 업무용 데스크톱",
                "state": "none",
                "desktop": None,
                "session_id": None,
            }
        ]
    }


def test_user_without_groups_has_no_pools(broker_url):
    client = BrokerClient(broker_url)
    client.login("guest01")
    assert client.get("/api/v1/desktops").json() == {"pools": []}


# -- connect failures -----------------------------------------------------------------------------


def test_connect_needs_a_login(broker_url):
    response = BrokerClient(broker_url).post("/api/v1/pools/mois-office/connect")
    assert response.status == 401


def test_connect_to_unknown_pool_is_404(client):
    response = client.post("/api/v1/pools/no-such-pool/connect")
    assert response.status == 404
    assert response.json()["error"]["reason"] == "unknown_pool"
    assert "no-such-pool" in response.json()["error"]["message"]


def test_connect_to_pool_of_other_groups_is_403_and_audited(client, broker_db, unreachable_providers):
    before = metric("vdi_connect_duration_seconds_count", result="forbidden")
    response = client.post("/api/v1/pools/moef-office/connect")
    assert response.status == 403
    assert response.json()["error"]["reason"] == "not_entitled"
    (event,) = audit_rows(broker_db, "connect")
    assert (event.actor, event.result, event.target) == ("kimmj", "denied", "moef-office")
    assert metric("vdi_connect_duration_seconds_count", result="forbidden") == before + 1
    assert unreachable_providers["local"].calls == []


def test_unreachable_host_is_503_naming_the_host_and_leaves_nothing_half_made(
    client, broker_db, unreachable_providers
):
    failures = metric("vdi_desktop_start_failures_total")
    response = client.post("/api/v1/pools/mois-office/connect", headers={"Accept-Language": "en"})
    assert response.status == 503
    error = response.json()["error"]
    assert error["reason"] == "host_unreachable"
    assert "host local" in error["message"]
    assert unreachable_providers["local"].calls == ["create_desktop"]
    assert metric("vdi_desktop_start_failures_total") == failures + 1
    with broker_db.transaction() as db:
        (desktop,) = db.scalars(select(Desktop)).all()
        assert desktop.state == "error"
        assert "host local" in desktop.error
        assert db.scalars(select(DesktopSession)).all() == []
    assert [e.result for e in audit_rows(broker_db, "connect")] == ["error"]
    # The failed desktop holds no slot and is not offered as the user's desktop.
    assert client.get("/api/v1/desktops").json()["pools"][0]["state"] == "none"


def test_unreachable_host_message_follows_the_users_language(client):
    response = client.post("/api/v1/pools/mois-office/connect", headers={"Accept-Language": "ko-KR,ko"})
    message = response.json()["error"]["message"]
    assert message.startswith("하이퍼바이저 호스트에 연결할 수 없습니다")
    assert "host local" in message


def test_no_host_with_room_is_503_with_the_placement_reason(
    tmp_path, broker_server, fake_authenticator, unreachable_providers
):
    config = make_broker_config(
        tmp_path / "full.db", hosts=[{"name": "local", "uri": "qemu:///system", "max_desktops": 0}]
    )
    client = BrokerClient(
        broker_server(config, authenticator=fake_authenticator, providers=unreachable_providers)
    )
    client.login("kimmj")
    before = metric("vdi_connect_duration_seconds_count", result="no_capacity")
    response = client.post("/api/v1/pools/mois-office/connect")
    assert response.status == 503
    error = response.json()["error"]
    assert error["reason"] == "no_capacity"
    assert "local" in error["message"]
    assert unreachable_providers["local"].calls == []
    assert metric("vdi_connect_duration_seconds_count", result="no_capacity") == before + 1


def test_no_hosts_at_all_is_503(tmp_path, broker_server, fake_authenticator):
    config = make_broker_config(tmp_path / "none.db")
    client = BrokerClient(broker_server(config, authenticator=fake_authenticator, providers={}))
    client.login("kimmj")
    response = client.post("/api/v1/pools/mois-office/connect")
    assert (response.status, response.json()["error"]["reason"]) == (503, "no_capacity")


def test_missing_image_is_503_before_any_host_is_touched(
    broker_server, broker_config, broker_db, fake_authenticator, unreachable_providers
):
    config = broker_config.model_copy(deep=True)
    config.images.cache_dir = broker_config.images.cache_dir.__class__("/nonexistent/images")
    client = BrokerClient(
        broker_server(config, authenticator=fake_authenticator, providers=unreachable_providers)
    )
    client.login("kimmj")
    response = client.post("/api/v1/pools/mois-office/connect")
    assert (response.status, response.json()["error"]["reason"]) == (503, "image_unavailable")
    assert unreachable_providers["local"].calls == []
    with broker_db.transaction() as db:
        assert db.scalars(select(Desktop)).all() == []
