"""`vdi center …` against a real database: the same checks and audit as the admin API."""

import json

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from tests.fixtures.cli import cli_runner, write_cli_config
from vdi.cli import main
from vdi.config import load_config


@pytest.fixture
def config_path(tmp_path):
    return write_cli_config(tmp_path)


@pytest.fixture
def vdi(config_path, capsys):
    return cli_runner(config_path, "center", capsys)


def test_center_lifecycle_from_the_command_line(vdi, config_path):
    code, out, err = vdi(
        "add", "sejong", "--name-ko", "세종 스마트워크센터", "--name-en", "Sejong Smart Work Center",
        "--hours", "mon=09:00-18:00", "--hours", "tue=09:00-18:00",
        "--network", "10.30.0.0/24", "--network", "10.30.1.0/24=internet",
        "--seats", "business=20", "--seats", "internet=4", "--policy", "require_booking",
    )  # fmt: skip
    assert code == 0, err
    center = json.loads(out)
    assert center["name_ko"] == "세종 스마트워크센터" and center["seats"] == {"business": 20, "internet": 4}
    assert center["networks"][1] == {"cidr": "10.30.1.0/24", "zone": "internet"}
    assert vdi("change", "sejong", "--seats", "business=24")[0] == 0
    code, out, _ = vdi("list", "--json")
    assert json.loads(out)[0]["seats"]["business"] == 24
    assert "세종 스마트워크센터" in vdi("list")[1]
    assert json.loads(vdi("occupancy", "sejong", "--day", "2026-12-07")[1])["reservations"] == []
    assert "removed" in vdi("remove", "sejong")[1]
    code, _, err = vdi("show", "sejong")
    assert code == 2 and "no center named sejong" in err
    config = load_config(config_path)
    database = Database(config.database)
    try:
        with database.transaction() as session:
            events = session.scalars(select(AuditEvent).where(AuditEvent.action.like("center.%"))).all()
    finally:
        database.close()
    assert [e.action for e in events] == ["center.add", "center.change", "center.remove"]
    assert all(e.actor.startswith("cli:") for e in events)


def test_cli_errors_name_the_field(vdi):
    args = ("add", "busan", "--name-ko", "부산", "--name-en", "Busan")
    code, _, err = vdi(*args, "--hours", "mon=9-18")
    assert code == 2 and "opening_hours" in err
    code, _, err = vdi(*args, "--seats", "business=many")
    assert code == 2 and "seats" in err
    code, _, err = vdi(*args, "--network", "10.0.0.0/24=guest")
    assert code == 2 and "networks.0.zone" in err
    assert vdi("list", "--json")[1].strip() == "[]"


def test_attendance_corrections_from_the_command_line(vdi):
    vdi("add", "sejong", "--name-ko", "세종 스마트워크센터", "--name-en", "Sejong Smart Work Center")
    code, out, err = vdi(
        "correct",
        "sejong",
        "choijw",
        "2026-12-01",
        "--in",
        "09:00",
        "--out",
        "18:00",
        "--reason",
        "단말 장애",
    )
    assert code == 0, err
    record = json.loads(out)
    assert (record["total_minutes"], record["correction_reason"]) == (540, "단말 장애")
    code, out, _ = vdi("attendance", "--from", "2026-12-01", "--center", "sejong")
    assert [r["username"] for r in json.loads(out)["records"]] == ["choijw"]
    code, _, err = vdi("correct", "sejong", "choijw", "2026-12-01", "--in", "09:00", "--reason", "")
    assert code == 2 and "reason" in err


def test_attendance_csv_keeps_korean(config_path, capfdbinary):
    main(
        [
            "--config",
            str(config_path),
            "center",
            "add",
            "busan",
            "--name-ko",
            "부산 센터",
            "--name-en",
            "Busan",
        ]
    )
    main(["--config", str(config_path), "center", "correct", "busan", "choijw", "2026-12-01", "--in", "09:00",
          "--reason", "수기 기록"])  # fmt: skip
    capfdbinary.readouterr()
    assert main(["--config", str(config_path), "center", "attendance", "--from", "2026-12-01", "--csv"]) == 0
    data = capfdbinary.readouterr().out
    assert data.startswith(b"\xef\xbb\xbf") and "부산 센터".encode() in data and "수기 기록".encode() in data
