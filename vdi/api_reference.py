"""Render the REST API reference (docs/api.md) from the broker's OpenAPI description (broker/web/openapi.py)."""

from __future__ import annotations

from broker.web.app import LOGIN_METHOD_ROUTES, routes
from broker.web.openapi import document

INTRO = """# REST API reference

Every broker serves the machine-readable description of its API, OpenAPI 3.1, at
**`GET /api/v1/openapi.json`** (no sign-in needed). It is generated from the routes the broker serves and
the pydantic models its handlers validate requests with, so it is always in step with the code; the routes
of a login method appear only while the method is enabled. Load it into any OpenAPI tool (Swagger UI,
Redoc, a client generator), e.g. `curl -s https://broker.example/api/v1/openapi.json`.

Signing in: `POST /api/v1/login` with `{"username", "password"}` answers with the `vdi_session` cookie.
Every request but GET carries the value of the `_xsrf` cookie in an `X-XSRFToken` header (`GET /api/v1/me`
sets that cookie). Errors are JSON: `{"error": {"reason", "message", "field"}}`, with `reason` a
machine-readable word and `field` the input it concerns. *admin* operations are for members of
`broker.admin_groups` (others get 403); *user* ones need a signed-in user; *public* ones need neither.
Every response carries an `X-Request-Id` header that names the request in the broker's logs
([logging.md](logging.md#request-ids)).

`make test` runs schemathesis against a live test broker with this
description (tests/broker/web/test_openapi.py): no answer may be a 5xx or break the description.

This page is generated (`python -m vdi.api_reference > docs/api.md`); a test keeps it in step.
"""

WHO = {"none": "public", "user": "user", "admin": "admin"}


def render() -> str:
    methods = ["password", *LOGIN_METHOD_ROUTES]
    description = document(routes(methods))
    lines = [INTRO, "| method | path | who | what | body | answer |", "|---|---|---|---|---|---|"]
    for path, item in description["paths"].items():
        for method, op in item.items():
            lines.append(_row(method, path, op))
    return "\n".join(lines) + "\n"


def _row(method: str, path: str, op: dict) -> str:
    who = "admin" if op.get("description", "").startswith("For members") else _who(op)
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    body_name = body.get("$ref", "").rsplit("/", 1)[-1]
    status = next(code for code in op["responses"] if code != "default")
    query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
    shown = path + (f"?{'&'.join(query)}" if query else "")
    return f"| {method.upper()} | `{shown}` | {who} | {op['summary']} | {body_name and f'`{body_name}`'} | {status} |"


def _who(op: dict) -> str:
    return "user" if any("portalSession" in need for need in op["security"]) else "public"


if __name__ == "__main__":
    print(render(), end="")
