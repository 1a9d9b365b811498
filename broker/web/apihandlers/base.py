"""The base of the REST API: JSON in, JSON out, and one place that renders every error."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from broker import errors
from broker.auth import PortalUser
from broker.web.base import BaseHandler, as_broker_error
from monitoring import logs

M = TypeVar("M", bound=BaseModel)


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


class APIHandler(BaseHandler):
    # Scripts and curl send no Accept-Language; they get English, which operators grep for.
    fallback_language = "en"

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=UTF-8")

    def require_user(self) -> PortalUser:
        if not self.current_user:
            raise errors.NotAuthenticated()
        return self.current_user

    def bind_session(self, session_id: str) -> None:
        """The desktop session this request is about, in its log lines from here on (known to exist:
        the service found it for this user, so it is no free text from the URL)."""
        logs.bind(session=session_id)

    def json_body(self) -> object:
        body = self.request.body or b"{}"
        try:
            value = json.loads(body)
        except UnicodeDecodeError:
            raise errors.InvalidJson("The request body is not UTF-8 encoded JSON.") from None
        except json.JSONDecodeError as exc:
            raise errors.InvalidJson(
                f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
            ) from None

        if _holds_nul(value):  # no field takes a NUL character, and PostgreSQL cannot store one
            raise errors.InvalidJson(
                "The request body holds a NUL character (\\u0000), which no field accepts."
            )
        return value

    def parse_body(self, model: type[M]) -> M:
        try:
            return model.model_validate(self.json_body())
        except ValidationError as exc:
            raise errors.invalid_field(exc) from None

    def write_json(self, data: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs) -> None:
        error = as_broker_error(status_code, kwargs.get("exc_info"))
        retry_after_s = getattr(error, "retry_after_s", None)
        if error.status == 429 and retry_after_s is not None:
            self.set_header("Retry-After", str(retry_after_s))
        body = error.as_json()
        body["error"]["message"] = self.localized_message(error)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_status(error.status)
        self.finish(json.dumps(body, ensure_ascii=False))


class AdminAPIHandler(APIHandler):
    """API endpoints for members of `broker.admin_groups` (group names compare case-insensitively)."""

    # require_admin: BaseHandler's (a member of broker.admin_groups, else 401 or 403).


class APINotFoundHandler(APIHandler):
    """Any /api/ path no route matched answers in JSON, like the rest of the API."""

    async def prepare(self) -> None:
        raise errors.NotFound("There is no such API endpoint.")
