"""Check-in and attendance derived from desktop sessions at center terminals (the toy provider runs the
desktops): check-in at the first connect, check-out at the last logoff, the daily record and its CSV with
Korean intact, and administrators' corrections audited with their reason."""

import csv
import datetime as dt
import io

from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from tests.fixtures.broker import BrokerClient
from tests.fixtures.centers import (
    AWAY_ADDRESS,
    CENTER_ADDRESS,
    SEOUL,
    add_center,
    connect_at,
    login_at,
    logoff_at,
)


def today() -> str:
    return dt.datetime.now(SEOUL).date().isoformat()


def admin_of(url) -> BrokerClient:
    client = BrokerClient(url)
    assert client.login("kimmj").status == 200
    return client


def check_ins() -> float:
    return REGISTRY.get_sample_value("vdi_center_check_ins_total") or 0.0


def test_first_connect_checks_in_and_last_logoff_checks_out(toy_centers_url):
    admin = admin_of(toy_centers_url)
    add_center(admin)
    user, response = login_at(toy_centers_url, "kimmj", CENTER_ADDRESS)  # a walk-in seat: B01
    assert response.status == 200, response.text
    before = check_ins()
    first = connect_at(user, "mois-office", CENTER_ADDRESS)
    assert check_ins() == before + 1
    (record,) = user.get("/api/v1/attendance").json()["records"]
    assert (record["center"], record["seat"], record["checked_out_at"]) == ("seoul-station", "B01", None)
    logoff_at(user, first["session_id"], CENTER_ADDRESS)
    second = connect_at(user, "mois-office", CENTER_ADDRESS)  # the same day: no second check-in
    assert check_ins() == before + 1
    logoff_at(user, second["session_id"], CENTER_ADDRESS)
    (record,) = user.get(f"/api/v1/attendance?from={today()}").json()["records"]
    assert record["checked_in_at"] < record["checked_out_at"]
    assert record["display_name"] == "김민준" and record["center_name_ko"] == "서울역 스마트워크센터"


def test_sessions_away_from_centers_are_no_attendance(toy_centers_url):
    admin = admin_of(toy_centers_url)
    add_center(admin)
    session = connect_at(admin, "mois-office", AWAY_ADDRESS)
    logoff_at(admin, session["session_id"], AWAY_ADDRESS)
    assert admin.get("/api/v1/attendance").json()["records"] == []


def test_csv_has_a_bom_and_korean_names_intact(toy_centers_url):
    admin = admin_of(toy_centers_url)
    add_center(admin)
    user, _ = login_at(toy_centers_url, "kimmj", CENTER_ADDRESS)
    logoff_at(user, connect_at(user, "mois-office", CENTER_ADDRESS)["session_id"], CENTER_ADDRESS)
    response = admin.get(f"/api/v1/admin/attendance?from={today()}&format=csv")
    assert response.status == 200 and response.headers["Content-Type"] == "text/csv; charset=UTF-8"
    assert response.body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(response.body.decode("utf-8-sig"))))
    assert rows[0][:4] == ["날짜", "사용자 ID", "이름", "센터"]
    assert rows[1][:5] == [today(), "kimmj", "김민준", "서울역 스마트워크센터", "B01"]
    english = admin.get(f"/api/v1/admin/attendance?from={today()}&format=csv&lang=en").body.decode(
        "utf-8-sig"
    )
    assert english.startswith("Date,User ID,Name,Center") and "Seoul Station Smart Work Center" in english


def test_a_correction_replaces_the_day_and_is_audited_with_its_reason(toy_centers_url, toy_centers_config):
    admin = admin_of(toy_centers_url)
    add_center(admin)
    day = dt.date(2026, 12, 1)
    body = {
        "username": "choijw",
        "center": "seoul-station",
        "day": day.isoformat(),
        "checked_in_at": dt.datetime(2026, 12, 1, 9, 0, tzinfo=SEOUL).isoformat(),
        "checked_out_at": dt.datetime(2026, 12, 1, 17, 30, tzinfo=SEOUL).isoformat(),
        "reason": "단말 장애로 로그인 지연 (센터 관리자 확인)",
    }
    response = admin.post("/api/v1/admin/attendance/corrections", json=body)
    assert response.status == 201, response.text
    assert response.json()["total_minutes"] == 510 and response.json()["corrected"] is True
    (record,) = admin.get(f"/api/v1/admin/attendance?from={day}&user=choijw").json()["records"]
    assert record["correction_reason"] == body["reason"]
    database = Database(toy_centers_config.database)
    try:
        with database.transaction() as session:
            (event,) = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "attendance.correct")
            ).all()
    finally:
        database.close()
    assert (event.actor, event.detail["reason"]) == ("kimmj", body["reason"])
    assert event.target == "seoul-station/choijw/2026-12-01"


def test_bad_corrections_name_the_field(toy_centers_url):
    admin = admin_of(toy_centers_url)
    add_center(admin)
    good = {
        "username": "choijw",
        "center": "seoul-station",
        "day": "2026-12-01",
        "checked_in_at": "2026-12-01T09:00:00+09:00",
        "reason": "forgot to log off",
    }
    for change, field in (
        ({"reason": ""}, "reason"),
        ({"checked_out_at": "2026-12-01T08:00:00+09:00"}, "checked_out_at"),
        ({"center": "busan"}, "center"),
        ({"checked_in_at": "2026-12-01T09:00:00"}, "checked_in_at"),
    ):
        response = admin.post("/api/v1/admin/attendance/corrections", json={**good, **change})
        assert response.status in (400, 404), response.text
        assert response.json()["error"]["field"] == field
    assert admin.get("/api/v1/admin/attendance?from=2026-12-01").json()["records"] == []
    assert admin.get("/api/v1/admin/attendance?from=2026-12-02&to=2026-12-01").status == 400
    assert admin.get("/api/v1/admin/attendance?from=9999-12-31").status == 400
    overflow = admin.post("/api/v1/admin/attendance/corrections", json={**good, "day": "9999-12-31"})
    assert (overflow.status, overflow.json()["error"]["field"]) == (400, "day")
    assert BrokerClient(toy_centers_url).get("/api/v1/admin/attendance").status == 401
