"""Log lines of every process: plain text for people, or JSON lines for log shippers (`[logging] format`).

Each line carries the request id, user and desktop session of the work it belongs to, taken from context
variables: the broker binds them per request (broker/web/base.py), the gateway per tunnel (gateway/relay.py),
so one connect can be followed from the broker's request to the gateway's tunnel by its request id. A task
started while they are bound inherits them (asyncio copies the context into new tasks).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "LoggingSettings",
    "bind",
    "configure",
    "new_request_id",
    "request_id",
    "valid_request_id",
]

REQUEST_ID_HEADER = "X-Request-Id"
# An id that arrives from outside (a trusted proxy's header, the gateway URL) is written into log lines
# and headers: only short plain tokens, so it cannot forge a line or a field.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# A safety net under the rule that secrets never reach logs: token-like query values are masked even
# when a message was written carelessly (RFC 6750 access_token, our console token=).
_SECRET_QUERY = re.compile(r"((?:token|password|secret|ticket|code)=)[^&\s\"']+", re.IGNORECASE)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_request_id: ContextVar[str | None] = ContextVar("vdi_request_id", default=None)
_user: ContextVar[str | None] = ContextVar("vdi_user", default=None)
_session: ContextVar[str | None] = ContextVar("vdi_session", default=None)
_UNSET = object()


class LoggingSettings(BaseModel):
    """`[logging]`: read by every process the `vdi` command starts (broker, gateway, demo, lab)."""

    model_config = ConfigDict(extra="forbid")

    level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="log level")
    format: str = Field(
        "text",
        pattern=r"^(text|json)$",
        description='"text": one readable line per record; "json": one JSON object per line with time, '
        "level, logger, message, request_id, user and session (docs/logging.md)",
    )


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex gave, for a sixth of its CPU (every console without `rid` makes
    one: vdi bench tunnel)."""
    return secrets.token_hex(16)


def valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID.fullmatch(value) is not None


def request_id() -> str | None:
    """The request id bound in this context, if any."""
    return _request_id.get()


def bind(*, request_id: object = _UNSET, user: object = _UNSET, session: object = _UNSET) -> None:
    """Attach ids to every log line written from this context (and tasks started from it) on."""
    for var, value in ((_request_id, request_id), (_user, user), (_session, session)):
        if value is not _UNSET:
            var.set(value)  # type: ignore[arg-type]


def mask_secrets(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1***", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; fields that are not known are null, so every line has the same keys."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
            # `extra={"session": …}` on one call wins over the context (a line about another session).
            "request_id": getattr(record, "request_id", _request_id.get()),
            "user": getattr(record, "user", _user.get()),
            "session": getattr(record, "session", _session.get()),
        }
        if record.exc_info:
            line["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure(settings: LoggingSettings | None = None) -> None:
    """Set up the root logger of a `vdi` process. Like logging.basicConfig, it leaves alone a root logger
    that already has handlers (a test runner or a program that embeds the command line owns its logging)."""
    settings = settings or LoggingSettings()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.level)
    # Alembic announces each of its plugins at INFO; the migrations it runs are what matters.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
