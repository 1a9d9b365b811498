"""broker/operations.py: the figures and searches behind the admin console and /api/v1/admin/…"""

import datetime as dt

import pytest

from broker.db import Database
from broker.db.models import AuditEvent, Host
from broker.operations import AuditQuery, SessionQuery, audit_csv, host_states, search_audit, search_sessions
from tests.fixtures.broker import seed_session


@pytest.fixture
def broker_db(admin_url, admin_config):
    """The database of a running broker, which has seeded its host and pools."""
    database = Database(admin_config.database)
    yield database
    database.close()


def test_host_states_count_health_and_admin_choice(broker_db):
    with broker_db.transaction() as db:
        db.add(Host(name="kvm-02", uri="test:///default", state="down", admin_state="draining"))
        db.add(Host(name="kvm-03", uri="test:///default", state="up", admin_state="disabled"))
    with broker_db.transaction() as db:
        states = host_states(db)
    assert states == {"total": 3, "up": 2, "down": 1, "draining": 1, "disabled": 1}


def test_audit_search_by_time_takes_naive_times_as_utc(broker_db):
    at = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
    with broker_db.transaction() as db:
        db.add(AuditEvent(at=at, actor="kimmj", action="host.change", result="success", target="kvm-01"))
        db.add(AuditEvent(at=at + dt.timedelta(hours=2), actor="leesh", action="login", result="success"))
    with broker_db.transaction() as db:
        window = AuditQuery(since="2026-12-01T08:59:00", until="2026-12-01T18:30:00+09:00")
        assert [e["actor"] for e in search_audit(db, window)] == ["kimmj"]
        assert [e["action"] for e in search_audit(db, AuditQuery(user="kvm-01"))] == ["host.change"]
        assert len(search_audit(db, AuditQuery(limit=1))) == 1


def test_session_search_treats_the_user_as_a_literal_prefix(broker_db):
    seed_session(broker_db, "kim_a", "mois-office")
    seed_session(broker_db, "kimxa", "mois-office")
    with broker_db.transaction() as db:
        assert [s["username"] for s in search_sessions(db, SessionQuery(user="kim_"))] == ["kim_a"]
        assert len(search_sessions(db, SessionQuery(user="kim", state="active"))) == 2


def test_audit_csv_has_a_bom_json_details_and_defused_formulas():
    rows = [
        {
            "id": 1,
            "at": "2026-12-01T09:00:00+00:00",
            "actor": '=HYPERLINK("x")',
            "action": "login",
            "result": "success",
            "target": "",
            "source_ip": "10.0.0.1",
            "detail": {"method": "password", "이름": "김민준"},
        }
    ]
    text = audit_csv(rows)
    assert text.startswith("\ufeffid,at,actor,action,result,target,source_ip,detail\r\n")
    assert "'=HYPERLINK" in text
    assert '"{""method"": ""password"", ""이름"": ""김민준""}"' in text
