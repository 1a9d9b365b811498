"""The OpenAPI 3.1 description of /api/v1, generated from the routes the application serves.

Each API handler declares its operations next to its code (`openapi = {"get": Operation(...)}`); request
bodies and query strings are the pydantic models the handler itself validates with (`parse_body`,
`parse_query`), so the document cannot drift from what the broker accepts. `document(routes)` walks the
application's route list, so a route without a description, or a description without a route, fails
tests/broker/web/test_openapi.py. Responses are JSON Schema written here beside the views' `as_json`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from broker.auth import SESSION_COOKIE

API_PREFIX = "/api/v1"
JSON = "application/json"
METHODS = ("get", "post", "patch", "put", "delete")
# A route's capture groups, e.g. "([^/]{1,64})"; our route patterns never nest groups.
GROUP = re.compile(r"\(([^()]*)\)")

Schema = dict[str, Any]


# -- JSON Schema shorthands -------------------------------------------------------------------------


def obj(*required: str, **properties: Schema) -> Schema:
    return {"type": "object", "required": list(required), "properties": properties}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
ANY_OBJECT: Schema = {"type": "object"}

ERROR: Schema = obj(
    "error",
    error=obj("reason", "message", reason=STR, message=STR, field=STR),
)
USER = obj("username", "display_name", "groups", username=STR, display_name=STR, groups=array(STR))
DESKTOP = obj("id", "name", "state", "pool", id=INT, name=STR, state=STR, pool=STR)
SESSION = obj(
    "session_id",
    "state",
    "desktop",
    "console_url",
    "started_at",
    session_id=STR,
    state=STR,
    desktop=DESKTOP,
    console_url=STR,
    started_at=TIME,
    ended_at=nullable(TIME),
)
ROLLOUT_PROGRESS = obj(
    "canaries_started",
    "canaries_wanted",
    "desktops_on_version",
    "desktops_total",
    "finished",
    canaries_started=INT,
    canaries_wanted=INT,
    desktops_on_version=INT,
    desktops_total=INT,
    finished=BOOL,
)
ROLLOUT = obj(
    "id",
    "pool",
    "version",
    "state",
    id=INT,
    pool=STR,
    image=STR,
    version=STR,
    from_image=STR,
    state=STR,
    canary=STR,
    canary_count=INT,
    canaries=array(STR),
    deadline_s=INT,
    requested_by=STR,
    created_at=TIME,
    deadline_at=TIME,
    finished_at=nullable(TIME),
    reason=nullable(STR),
    # In the pool's status (GET …/rollout, the pools' overview), not in the answer that starts one.
    progress=ROLLOUT_PROGRESS,
)
HOST = obj(
    "name",
    "provider",
    "uri",
    "health",
    "admin_state",
    "labels",
    "capacity",
    "usage",
    name=STR,
    provider=STR,
    uri=STR,
    health={"enum": ["up", "down"]},
    admin_state={"enum": ["enabled", "disabled", "draining"]},
    labels={"type": "object", "additionalProperties": STR},
    capacity=obj(
        "max_desktops",
        vcpus=nullable(INT),
        memory_mib=nullable(INT),
        cpu_ratio=NUM,
        ram_ratio=NUM,
        max_desktops=INT,
    ),
    usage=obj("desktops", desktops=INT, vcpus=INT, memory_mib=INT),
    cpu_load=nullable(NUM),
    images=array(STR),
    generation=INT,
    console_access=STR,
    ssh_address=nullable(STR),
)
IMAGE_VERSION = obj(
    "name",
    "version",
    "sha256",
    name=STR,
    version=STR,
    os=nullable(STR),
    sha256=nullable(STR),
    size_bytes=nullable(INT),
    virtual_size_bytes=nullable(INT),
    path=nullable(STR),
    created_at=nullable(TIME),
    immutable=nullable(BOOL),
)
POOL_OVERVIEW = obj(
    "name",
    "kind",
    "sizes",
    "desktops",
    "image",
    name=STR,
    display_name=STR,
    kind=STR,
    sizes=obj("min_size", "spares", min_size=INT, max_size=nullable(INT), spares=INT),
    desktops=obj(
        "total", "spare", "spare_ready", "in_use", total=INT, spare=INT, spare_ready=INT, in_use=INT
    ),
    headroom=nullable(INT),
    image=STR,
    rollout=nullable(ROLLOUT),
)
SESSION_ROW = obj(
    "id",
    "username",
    "pool",
    "state",
    id=STR,
    username=STR,
    pool=STR,
    desktop=STR,
    host=nullable(STR),
    client_ip=STR,
    state=STR,
    started_at=nullable(TIME),
    ended_at=nullable(TIME),
    last_input_at=nullable(TIME),
)
AUDIT_EVENT = obj(
    "id",
    "at",
    "actor",
    "action",
    "result",
    id=INT,
    at=TIME,
    actor=STR,
    action=STR,
    result=STR,
    target=STR,
    source_ip=STR,
    detail=ANY_OBJECT,
)
OVERVIEW = obj(
    "sessions_active",
    "hosts",
    "pools",
    "logons_last_minute",
    at=TIME,
    sessions_active=INT,
    hosts=obj(
        "total", "up", "down", "draining", "disabled", total=INT, up=INT, down=INT, draining=INT, disabled=INT
    ),
    pools=array(POOL_OVERVIEW),
    logons_last_minute=INT,
    logons_per_minute_last_hour=NUM,
)
PLACEMENT_EXPLANATION = obj(
    "pool",
    "hosts",
    "host",
    "filters",
    pool=STR,
    hosts=INT,
    host=nullable(STR),
    reason=nullable(STR),
    filters=array(obj("filter", "kept", filter=STR, reason=STR, kept=INT, dropped=array(STR))),
    top_candidates=array(obj("host", "weight", host=STR, weight=NUM)),
    explanation=array(STR),
)
OPENING_HOURS: Schema = {"type": "object", "additionalProperties": STR}
SEATS: Schema = obj("business", "internet", business=INT, internet=INT)
CENTER_PUBLIC_FIELDS = dict(
    name=STR,
    name_ko=STR,
    name_en=STR,
    address=STR,
    time_zone=STR,
    opening_hours=OPENING_HOURS,
    seats=SEATS,
    booking_policy={"enum": ["walk_in", "require_booking"]},
)
CENTER_PUBLIC = obj(*CENTER_PUBLIC_FIELDS, **CENTER_PUBLIC_FIELDS)
CENTER = obj(
    *CENTER_PUBLIC_FIELDS,
    "networks",
    "walk_in_minutes",
    "unregistered_terminals",
    "kiosk_idle_s",
    **CENTER_PUBLIC_FIELDS,
    networks=array(obj("cidr", "zone", cidr=STR, zone={"enum": ["business", "internet"]})),
    walk_in_minutes=INT,
    unregistered_terminals={"enum": ["allow", "limit", "refuse"]},
    kiosk_idle_s=INT,
)
HERE = obj(
    "center",
    "zone",
    center=nullable(STR),
    name_ko=STR,
    name_en=STR,
    zone=nullable({"enum": ["business", "internet"]}),
)
TERMINAL = obj(
    "id",
    "center",
    "name",
    "address",
    "certificate_sha256",
    "certificate_subject",
    id=INT,
    center=STR,
    name=STR,
    address=nullable(STR),
    certificate_sha256=nullable(STR),
    certificate_subject=STR,
)
RESERVATION = obj(
    "id",
    "center",
    "zone",
    "seat",
    "username",
    "starts_at",
    "ends_at",
    "state",
    "kind",
    id=INT,
    center=STR,
    zone={"enum": ["business", "internet"]},
    seat=STR,
    username=STR,
    starts_at=TIME,
    ends_at=TIME,
    state={"enum": ["booked", "cancelled"]},
    kind={"enum": ["booking", "walk_in"]},
)
OCCUPANCY = obj(
    "center",
    "day",
    "seats",
    "reservations",
    center=STR,
    day={"type": "string", "format": "date"},
    seats=SEATS,
    reservations=array(RESERVATION),
)
ATTENDANCE_RECORD = obj(
    "day",
    "username",
    "display_name",
    "center",
    "center_name_ko",
    "seat",
    "checked_in_at",
    "checked_out_at",
    "total_minutes",
    "corrected",
    "correction_reason",
    day={"type": "string", "format": "date"},
    username=STR,
    display_name=STR,
    center=STR,
    center_name_ko=STR,
    seat=STR,
    checked_in_at=TIME,
    checked_out_at=nullable(TIME),
    total_minutes=INT,
    corrected=BOOL,
    correction_reason=nullable(STR),
)
TRANSFER = obj(
    "id",
    "username",
    "from_zone",
    "to_zone",
    "kind",
    "state",
    "created_at",
    id=INT,
    username=STR,
    from_zone={"enum": ["business", "internet"]},
    to_zone={"enum": ["business", "internet"]},
    kind={"enum": ["text", "file"]},
    filename=STR,
    size_bytes=INT,
    sha256=STR,
    reason=STR,
    state=STR,
    scan_result=STR,
    decided_by=nullable(STR),
    decision_note=STR,
    created_at=TIME,
)


# -- operations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One method of one API route, as its handler serves it."""

    operation_id: str
    summary: str
    # None: an answer without a body (204).
    response: Schema | None
    status: int = 200
    # none: anyone; user: a portal session; admin: a portal session of a member of broker.admin_groups.
    auth: Literal["none", "user", "admin"] = "user"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: tuple[str, ...] = ()
    media_type: str = JSON
    # The same answer in other media types, e.g. {"text/csv": STR} for a `format=csv` query.
    other_media: dict[str, Schema] = field(default_factory=dict)
    tags: tuple[str, ...] = field(default_factory=tuple)
    # OpenAPI links: what a client (or schemathesis' stateful phase) can call next with this answer's data,
    # {operationId: {parameter: runtime expression such as "$response.body#/hosts/0/name"}}.
    links: dict[str, dict[str, str]] = field(default_factory=dict)


def path_template(pattern: str, names: tuple[str, ...]) -> tuple[str, list[Schema]]:
    """ "/api/v1/hosts/([^/]{1,64})" and ("name",) → "/api/v1/hosts/{name}" and its path parameters."""
    groups = GROUP.findall(pattern)
    if len(groups) != len(names):
        raise ValueError(f"{pattern}: {len(groups)} capture groups, {len(names)} path parameter names")
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{group}$"}}
        for name, group in zip(names, groups, strict=True)
    ]
    template = pattern
    for name in names:
        template = GROUP.sub("{" + name + "}", template, count=1)
    return template, parameters


def query_parameters(model: type[BaseModel]) -> list[Schema]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        # A query argument is absent rather than null.
        options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
        plain = {k: v for k, v in {**prop, **options[0]}.items() if k not in ("anyOf", "title", "default")}
        if "default" in prop and prop["default"] is not None:
            plain["default"] = prop["default"]
        parameter = {"name": name, "in": "query", "required": name in required, "schema": plain}
        if prop.get("description"):
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


class Components:
    """The request body schemas of the pydantic models, each once under #/components/schemas."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {"Error": ERROR}

    def body(self, model: type[BaseModel]) -> Schema:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}


def security(auth: str, method: str) -> list[dict]:
    # Tornado's xsrf_cookies: every request but GET, signed in or not, carries the _xsrf cookie's token
    # in X-XSRFToken.
    needs = {} if auth == "none" else {"portalSession": []}
    if method != "get":
        needs["xsrfToken"] = []
    return [needs] if needs else []


def operation_object(op: Operation, method: str, path_params: list[Schema], components: Components) -> dict:
    parameters = [*path_params, *(query_parameters(op.query) if op.query else [])]
    success: dict[str, Any] = {"description": op.summary}
    if op.response is not None:
        media = {op.media_type: op.response, **op.other_media}
        success["content"] = {name: {"schema": schema} for name, schema in media.items()}
    if op.links:
        success["links"] = {
            target: {"operationId": target, "parameters": parameters}
            for target, parameters in op.links.items()
        }
    errors = {"description": "An error, with a machine-readable reason and the field it concerns"}
    errors["content"] = {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}
    result: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": list(op.tags),
        "security": security(op.auth, method),
        "responses": {str(op.status): success, "default": errors},
    }
    if op.auth == "admin":
        result["description"] = "For members of broker.admin_groups (others get 403)."
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        content = {JSON: {"schema": components.body(op.body)}}
        result["requestBody"] = {"required": True, "content": content}
    return result


def api_operations(routes: list[tuple]) -> list[tuple[str, str, Operation]]:
    """(route pattern, method, operation) of every /api/v1 route's handler, in route order."""
    found = []
    for pattern, handler, *_ in routes:
        if not pattern.startswith(API_PREFIX):
            continue
        # A handler that declares nothing is left out here, and fails tests/broker/web/test_openapi.py.
        for method, op in getattr(handler, "openapi", {}).items():
            found.append((pattern, method, op))
    return found


def document(routes: list[tuple], version: str = "1") -> dict:
    """The OpenAPI 3.1 document of the /api/v1 routes in `routes` (broker.web.app.routes)."""
    components = Components()
    paths: dict[str, dict] = {}
    for pattern, method, op in api_operations(routes):
        template, path_params = path_template(pattern, op.path_params)
        paths.setdefault(template, {})[method] = operation_object(op, method, path_params, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smartwork-vdi broker API",
            "version": version,
            "description": "The REST API of the connection broker. Sign in with POST /api/v1/login; the "
            "broker answers with a session cookie, and every request but GET carries the _xsrf cookie's "
            "value in the X-XSRFToken header.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "portalSession": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                "xsrfToken": {"type": "apiKey", "in": "header", "name": "X-XSRFToken"},
            },
        },
    }
