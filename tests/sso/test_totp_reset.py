"""An administrator resets a user's TOTP enrolment (lost phone), over the API and the command line."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from tests.fixtures.common import ROOT
from tests.fixtures.gateway import metric
from tests.fixtures.login_security import (
    CENTER_NETWORKS,
    INSIDE_CENTER,
    OUTSIDE,
    SourceClient,
    enrol,
    next_code,
)
from vdi.lab.slapd import DEMO_PASSWORD

POLICY = {"required_outside_centers": True, "center_networks": CENTER_NETWORKS}
ADMIN = "parkjh"  # in the admin group msit


def admin_client(url: str, username: str = ADMIN) -> SourceClient:
    client = SourceClient(url, INSIDE_CENTER)
    assert client.login(username, DEMO_PASSWORD).status == 200
    return client


def reset(client: SourceClient, username: str, **kwargs):
    return client.request("DELETE", f"/api/v1/admin/users/{username}/totp", **kwargs)


def reset_audits(config) -> list[tuple[str, str, str, dict]]:
    db = Database(config.database)
    try:
        with db.transaction() as s:
            rows = s.scalars(
                select(AuditEvent).where(AuditEvent.action == "totp_reset").order_by(AuditEvent.id)
            )
            return [(row.actor, row.target, row.result, dict(row.detail)) for row in rows]
    finally:
        db.close()


def test_after_a_reset_the_user_must_enrol_again_at_a_center(secure_broker):
    url, config = secure_broker(totp=POLICY)
    old_phone = enrol(url, "kimmj")
    outside = SourceClient(url, OUTSIDE)
    waiting = outside.login("kimmj", DEMO_PASSWORD)
    assert waiting.json()["error"]["reason"] == "totp_required"
    resets_before = metric("vdi_totp_resets_total")

    answer = reset(admin_client(url), "kimmj")

    assert answer.status == 200, answer.text
    assert answer.json() == {"username": "kimmj", "totp_enrolled": False}
    assert reset_audits(config) == [(ADMIN, "kimmj", "success", {"via": "api"})]
    assert metric("vdi_totp_resets_total") == resets_before + 1
    # The pending login of the old phone cannot be finished, not even with a valid code of it.
    pending = waiting.json()["error"]["pending"]
    late = outside.post("/api/v1/login/totp", json={"pending": pending, "code": next_code(old_phone)})
    assert late.json()["error"]["reason"] == "login_expired"
    # From outside, the password alone no longer gets a code prompt: enrolment comes first, at a center.
    refused = SourceClient(url, OUTSIDE).login("kimmj", DEMO_PASSWORD)
    assert refused.status == 403
    assert refused.json()["error"]["reason"] == "totp_enrolment_required"

    new_phone = enrol(url, "kimmj")
    pending = SourceClient(url, OUTSIDE).login("kimmj", DEMO_PASSWORD).json()["error"]["pending"]
    finished = outside.post("/api/v1/login/totp", json={"pending": pending, "code": next_code(new_phone)})
    assert finished.status == 200, finished.text


def test_only_administrators_may_reset(secure_broker):
    url, config = secure_broker(totp=POLICY)
    enrol(url, "kimmj")
    refused = reset(admin_client(url, "leesy"), "kimmj")
    assert refused.status == 403
    assert refused.json()["error"]["reason"] == "forbidden"
    assert reset(SourceClient(url, INSIDE_CENTER), "kimmj").status == 401
    assert reset_audits(config) == []
    assert (
        SourceClient(url, OUTSIDE).login("kimmj", DEMO_PASSWORD).json()["error"]["reason"] == "totp_required"
    )


def test_unknown_users_and_users_without_a_factor_get_404_naming_them(secure_broker):
    url, config = secure_broker(totp=POLICY)
    admin = admin_client(url)
    SourceClient(url, INSIDE_CENTER).login("leesy", DEMO_PASSWORD)  # known to the broker, nothing enrolled

    unknown = reset(admin, "nobody")
    assert unknown.status == 404
    assert unknown.json()["error"] == {
        "reason": "unknown_user",
        "message": "There is no user 'nobody' known to the broker.",
        "field": "username",
    }
    not_enrolled = reset(admin, "leesy", headers={"Accept-Language": "ko"})
    assert not_enrolled.status == 404
    assert not_enrolled.json()["error"]["reason"] == "totp_not_enrolled"
    assert not_enrolled.json()["error"]["message"] == "leesy 사용자는 2단계 인증 앱을 등록하지 않았습니다."
    assert reset_audits(config) == []


def write_cli_config(path, config) -> None:
    ldap = config.ldap
    path.write_text(
        f"""
[database]
url = "{config.database.url}"

[broker]
cookie_secret = "{config.broker.cookie_secret.get_secret_value()}"

[ldap]
url = "{ldap.url}"
user_base = "{ldap.user_base}"
group_base = "{ldap.group_base}"

[[hosts]]
name = "local"
uri = "test:///default"
"""
    )


def test_the_command_line_resets_and_names_what_it_cannot(secure_broker, tmp_path):
    url, config = secure_broker(totp=POLICY)
    enrol(url, "kimmj")
    config_file = tmp_path / "vdi.toml"
    write_cli_config(config_file, config)

    def vdi(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "vdi.cli", "--config", str(config_file), "totp", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    done = vdi("reset", "kimmj")
    assert done.returncode == 0, done.stderr
    assert "kimmj" in done.stdout
    [(actor, target, result, detail)] = reset_audits(config)
    assert actor.startswith("cli:") and (target, result, detail) == ("kimmj", "success", {"via": "cli"})
    assert SourceClient(url, OUTSIDE).login("kimmj", DEMO_PASSWORD).status == 403

    again = vdi("reset", "kimmj")
    assert again.returncode == 2
    assert "User 'kimmj' has no second factor enrolled." in again.stderr
    unknown = vdi("reset", "nobody")
    assert unknown.returncode == 2 and "'nobody'" in unknown.stderr
