"""Errors: one hierarchy with status and reason, rendered as JSON by the API and as a page by the portal."""

import pytest

from broker import errors
from broker.web.base import as_broker_error, error_for_status
from tests.fixtures.broker import BrokerClient


def test_error_json_carries_reason_message_and_field():
    error = errors.InvalidField("password: Field required", field="password")
    assert (error.status, error.reason) == (400, "invalid_field")
    assert error.as_json() == {
        "error": {"reason": "invalid_field", "message": "password: Field required", "field": "password"}
    }


def test_error_json_omits_an_empty_field():
    assert errors.UnknownSession().as_json() == {
        "error": {"reason": "unknown_session", "message": "There is no such session."}
    }


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.InvalidJson, 400),
        (errors.NotAuthenticated, 401),
        (errors.InvalidCredentials, 401),
        (errors.CsrfFailed, 403),
        (errors.NotEntitled, 403),
        (errors.UnknownPool, 404),
        (errors.SessionEnded, 409),
        (errors.DirectoryUnavailable, 503),
        (errors.HostUnreachable, 503),
        (errors.NoCapacity, 503),
    ],
)
def test_statuses(cls, status):
    assert cls().status == status


def test_login_refusal_keeps_the_authenticators_status():
    assert errors.LoginRefused("locked", status=429).status == 429


def test_plain_http_errors_get_a_reason_from_their_status():
    error = error_for_status(405)
    assert (error.status, error.reason, error.message) == (405, "method_not_allowed", "Method Not Allowed.")


def test_unexpected_exceptions_reveal_nothing():
    try:
        raise RuntimeError("password=hunter2 at /etc/secret")
    except RuntimeError as exc:
        error = as_broker_error(500, (type(exc), exc, exc.__traceback__))
    assert error.as_json() == {"error": {"reason": "internal_error", "message": "Internal error."}}


def test_unknown_api_path_is_json_404(broker_url):
    response = BrokerClient(broker_url).get("/api/v1/nothing-here")
    assert response.status == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["reason"] == "not_found"


def test_wrong_method_is_json_405(broker_url):
    response = BrokerClient(broker_url).get("/api/v1/login")
    assert response.status == 405
    assert response.json()["error"]["reason"] == "method_not_allowed"


def test_unknown_page_is_an_html_404(broker_url):
    response = BrokerClient(broker_url).get("/no/such/page", headers={"Accept-Language": "en"})
    assert response.status == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert 'role="alert"' in response.text
    assert "The page was not found." in response.text


def test_authenticator_crash_is_a_bare_500(broker_url, fake_authenticator):
    async def crash(username, password):
        raise RuntimeError("ldap://admin:hunter2@dir crashed")

    fake_authenticator._authenticate = crash
    response = BrokerClient(broker_url).login("kimmj")
    assert response.status == 500
    assert response.json()["error"] == {"reason": "internal_error", "message": "An internal error occurred."}
    assert "hunter2" not in response.text


def test_a_nul_character_in_a_body_or_query_is_a_400_not_a_database_error(broker_url, client):
    # PostgreSQL cannot store NUL; no field takes one, so it is refused before any query runs.
    body = BrokerClient(broker_url).post("/api/v1/login", json={"username": "kim\x00mj", "password": "x"})
    assert body.status == 400
    assert body.json()["error"]["reason"] == "invalid_json"
    query = client.get("/api/v1/attendance?from=2026-12-01%00")
    assert query.status == 400
    assert query.json()["error"]["field"] == "from"
