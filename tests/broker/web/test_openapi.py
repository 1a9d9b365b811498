"""/api/v1/openapi.json: the OpenAPI 3.1 description is in step with the routes, and schemathesis, run against
a live broker as an administrator, finds no 5xx and no answer that breaks the description."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tornado.web

from broker.db import Database
from broker.web.app import routes
from broker.web.openapi import API_PREFIX, METHODS, document, path_template
from tests.fixtures.broker import BrokerClient, seed_session

ALL_LOGIN_METHODS = ["password", "certificate"]
EXAMPLES = int(os.environ.get("VDI_SCHEMATHESIS_EXAMPLES", "25"))


def implemented(handler: type) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


def api_routes(login_methods):
    return [
        (pattern, handler) for pattern, handler, *_ in routes(login_methods) if pattern.startswith(API_PREFIX)
    ]


@pytest.mark.parametrize("login_methods", [["password"], ALL_LOGIN_METHODS])
def test_every_api_route_and_method_is_described_and_nothing_else(login_methods):
    served = set()
    for pattern, handler in api_routes(login_methods):
        methods = implemented(handler)
        assert set(getattr(handler, "openapi", {})) == methods, f"{pattern}: described methods differ"
        names = next(iter(handler.openapi.values())).path_params
        served |= {(path_template(pattern, names)[0], method) for method in methods}
    described = {
        (path, method) for path, item in document(routes(login_methods))["paths"].items() for method in item
    }
    assert described == served


def test_the_broker_serves_the_description_of_its_own_routes(admin_url):
    served = BrokerClient(admin_url).get("/api/v1/openapi.json")
    assert served.status == 200
    description = served.json()
    assert description == document(routes(["password"]))
    assert description["openapi"] == "3.1.0"
    assert "/api/v1/login/certificate" not in description["paths"]  # not enabled on this broker
    assert "/api/v1/login/certificate" in document(routes(ALL_LOGIN_METHODS))["paths"]


def test_request_bodies_and_queries_are_the_handlers_models():
    description = document(routes(ALL_LOGIN_METHODS))
    schemas = description["components"]["schemas"]
    assert {"LoginRequest", "NewHost", "HostChange", "RolloutRequest", "TotpCodeRequest"} <= set(schemas)
    assert schemas["HostChange"]["additionalProperties"] is False
    audit = description["paths"]["/api/v1/admin/audit"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("format") for p in audit if p["name"] in ("since", "until")} == {
        "since": "date-time",
        "until": "date-time",
    }
    host = description["paths"]["/api/v1/hosts/{name}"]["patch"]
    assert host["parameters"][0]["schema"]["pattern"] == "^[^/]{1,64}$"
    assert host["security"] == [{"portalSession": [], "xsrfToken": []}]


# Signing in replaces the browser's session, even when the sign-in fails (broker/web/base.py log_in), and
# signing out ends it: these run without the administrator's cookie, the others with it.
PUBLIC = ("login", "loginTotp", "logout")
# Adding a host connects to whatever URI it is given: traffic to made-up addresses, so not fuzzed.
NOT_FUZZED = ("addHost",)
# Schemathesis reuses values it saw in answers (the administrator's own name from /me): signing a user out
# everywhere runs on its own, last, as it may sign out the run's administrator.
REVOKE = ("revokeUserSessions",)
# Changing pools at random takes them from the run's administrator (their groups) or removes them, and then
# every connect answers 403 or 404: these run on their own, after the others.
POOL_CHANGES = ("addPool", "changePool", "removePool")
# A connect answers 503 no_capacity by design once the run has drained, disabled or removed the only host.
CONFIG = """
[[operations]]
include-operation-id = "connect"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


def schemathesis(url: str, tmp_path: Path, phases: str, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        *("--config-file", str(config)),
        "run",
        f"{url}/api/v1/openapi.json",
        *("--checks", "not_a_server_error,response_schema_conformance,content_type_conformance"),
        *("--phases", phases),
        *("--max-examples", str(EXAMPLES)),
        *("--seed", "20261206"),
        *("--workers", "1"),
        *("--request-timeout", "20"),
        *("--report-dir", str(tmp_path / "report")),
        *args,
    ]
    # Run in the test's directory: schemathesis keeps a cache in its working directory.
    run = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"}
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-4000:]
    return run


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_description(
    admin_url, admin_client, admin_config, tmp_path
):
    db = Database(admin_config.database)
    try:
        seed_session(db, "guest01", "mois-office")  # something for the sessions search and the force logoff
    finally:
        db.close()
    anonymous = BrokerClient(admin_url).xsrf()
    public = schemathesis(
        admin_url,
        tmp_path,
        "examples,coverage,fuzzing",  # no links lead between these three
        *("--header", f"Cookie: _xsrf={anonymous}"),
        *("--header", f"X-XSRFToken: {anonymous}"),
        *[a for op in PUBLIC for a in ("--include-operation-id", op)],
    )
    assert "Authentication failed" not in public.stdout
    auth = signed_in_headers(admin_client)
    signed_in = schemathesis(
        admin_url,
        tmp_path,
        "examples,coverage,fuzzing,stateful",
        *auth,
        *[a for op in (*PUBLIC, *NOT_FUZZED, *POOL_CHANGES, *REVOKE) for a in ("--exclude-operation-id", op)],
    )
    # Every operation was reached as the administrator: none answered only 401 or 403, but for the second
    # factor's enrolment, which this broker allows from smart work center networks only (there are none).
    refused = signed_in.stdout.partition("Authentication failed")[2].partition("💡")[0]
    assert set(re.findall(r"- [A-Z]+ \S+", refused)) <= {
        "- POST /api/v1/totp/enrolment",
        "- POST /api/v1/totp/enrolment/confirm",
    }, signed_in.stdout[-6000:]
    schemathesis(
        admin_url,
        tmp_path,
        "examples,coverage,fuzzing",
        *auth,
        *[a for op in POOL_CHANGES for a in ("--include-operation-id", op)],
    )
    schemathesis(admin_url, tmp_path, "examples,coverage,fuzzing", *auth, "--include-operation-id", *REVOKE)


def signed_in_headers(client: BrokerClient) -> list[str]:
    session, xsrf = client.cookie("vdi_session").value, client.xsrf()
    return ["--header", f"Cookie: vdi_session={session}; _xsrf={xsrf}", "--header", f"X-XSRFToken: {xsrf}"]
