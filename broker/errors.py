"""Errors the broker answers with: an HTTP status, a machine-readable reason, a human message.

Services raise these; one `write_error` per handler family (JSON for the API, a page for the
portal) renders them. Messages are safe to show: they never carry tokens, passwords or
stack traces, and `params` only hold values already safe to show (host and pool names).
"""

from __future__ import annotations

from pydantic import ValidationError


class BrokerError(Exception):
    status = 500
    reason = "internal_error"
    message = "Internal error."

    def __init__(self, message: str | None = None, *, field: str | None = None, **params: str) -> None:
        self.message = message or self.message
        self.field = field
        # Named values inside `message`, so a translation can put them into another sentence.
        self.params = params
        super().__init__(self.message)

    def as_json(self) -> dict:
        body = {"reason": self.reason, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}


class BadRequest(BrokerError):
    status = 400
    reason = "bad_request"
    message = "The request is not valid."


class InvalidJson(BadRequest):
    reason = "invalid_json"
    message = "The request body is not valid JSON."


class InvalidField(BadRequest):
    reason = "invalid_field"


def invalid_field(exc: ValidationError) -> InvalidField:
    """The first problem of a validated input as a 400 that names the field, e.g. `password: Field required`."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return InvalidField(f"{field or 'body'}: {first['msg']}", field=field)


class NotAuthenticated(BrokerError):
    status = 401
    reason = "not_authenticated"
    message = "Please sign in first."


class LoginRefused(BrokerError):
    """A login the authenticator refused; the status follows its AuthError (e.g. 429 when locked out)."""

    status = 401
    reason = "login_refused"
    message = "The login was refused."

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status or self.status


class InvalidCredentials(LoginRefused):
    reason = "invalid_credentials"
    message = "The user name or password is incorrect."


class DirectoryUnavailable(LoginRefused):
    status = 503
    reason = "directory_unavailable"
    message = "The directory is unavailable. Please try again shortly."


class Forbidden(BrokerError):
    status = 403
    reason = "forbidden"
    message = "You are not allowed to do this."


class CsrfFailed(Forbidden):
    reason = "xsrf_failed"
    message = "The request did not carry a valid XSRF token; reload the page and try again."


class NotEntitled(Forbidden):
    reason = "not_entitled"
    message = "You are not entitled to this desktop pool."


class NotFound(BrokerError):
    status = 404
    reason = "not_found"
    message = "Not found."


class UnknownPool(NotFound):
    reason = "unknown_pool"
    message = "There is no such desktop pool."


class UnknownSession(NotFound):
    reason = "unknown_session"
    message = "There is no such session."


class Conflict(BrokerError):
    status = 409
    reason = "conflict"


class SessionEnded(Conflict):
    reason = "session_ended"
    message = "This session has ended."


class DesktopNotRunning(Conflict):
    reason = "desktop_not_running"
    message = "The desktop is not running."


class DesktopStarting(Conflict):
    reason = "desktop_starting"
    message = "Your desktop is still starting; try again in a moment."


class MetricsForbidden(BrokerError):
    status = 403
    reason = "metrics_forbidden"
    message = "Metrics need the configured bearer token or a client in metrics_networks."


class TooManyRequests(BrokerError):
    """429 with Retry-After (RFC 6585 section 4): `retry_after_s` says when to try again."""

    status = 429
    reason = "too_many_requests"
    message = "Too many requests. Please try again later."
    retry_after_s = 60


class ConsoleTokenRate(TooManyRequests):
    reason = "console_token_rate"
    message = "Too many console openings in a short time. Please wait a minute and try again."


class ServiceUnavailable(BrokerError):
    status = 503
    reason = "service_unavailable"
    message = "The service is unavailable. Please try again shortly."


class DatabaseUnavailable(ServiceUnavailable):
    """The shared database cannot be reached now (degraded mode, docs/database.md): a quick 503, never a hang."""

    reason = "database_unavailable"
    message = "The service is temporarily unavailable. Please try again in a moment."


class HostUnreachable(ServiceUnavailable):
    reason = "host_unreachable"


class HypervisorFailed(ServiceUnavailable):
    reason = "hypervisor_error"


class NoCapacity(ServiceUnavailable):
    reason = "no_capacity"


class PlacementConflict(ServiceUnavailable):
    reason = "placement_conflict"
    message = "Too many desktops are starting at once; please try again."


class ImageUnavailable(ServiceUnavailable):
    reason = "image_unavailable"
