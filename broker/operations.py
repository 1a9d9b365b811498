"""What operators look at: the dashboard figures, the pools' sizes and rollouts, session search and the audit log.

Read-only views over the database shared by the admin REST API (/api/v1/admin/…) and the admin console
pages (/admin/…); every function runs in Database.run's worker thread. Changes (drain a host, force a
logoff, start a rollout) stay with the services that own them (inventory, desktops, signout, rollout),
which audit them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.config import BrokerConfig, PoolSettings
from broker.db.models import AuditEvent, Desktop, DesktopSession, Host, utcnow
from broker.pools import pool_counts
from broker.rollout import rollout_status

# The audit actions operators filter by; others can still be typed in the search form.
AUDIT_ACTION_HINTS = (
    "login",
    "logout",
    "connect",
    "logoff",
    "force_logoff",
    "revoke_sessions",
    "host.add",
    "host.change",
    "host.remove",
    "rollout.start",
    "desktop.move",
    "totp_reset",
    "audit_export",
)
MAX_ROWS = 1000
CSV_COLUMNS = ("id", "at", "actor", "action", "result", "target", "source_ip", "detail")
# Excel opens a CSV as UTF-8 (Korean names intact) only when the file starts with a byte order mark.
UTF8_BOM = "\ufeff"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- the dashboard ---------------------------------------------------------------------------------


def host_states(db: Session) -> dict[str, int]:
    """Hosts by health (up, down) and by what an administrator chose (draining, disabled)."""
    counts = {"total": 0, "up": 0, "down": 0, "draining": 0, "disabled": 0}
    for state, admin_state, number in db.execute(
        select(Host.state, Host.admin_state, func.count()).group_by(Host.state, Host.admin_state)
    ):
        counts["total"] += number
        counts["up" if state == "up" else "down"] += number
        if admin_state in ("draining", "disabled"):
            counts[admin_state] += number
    return counts


def logons_since(db: Session, since: dt.datetime) -> int:
    return db.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "login", AuditEvent.result == "success", AuditEvent.at >= since)
    )


def active_sessions(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(DesktopSession).where(DesktopSession.state == "active"))


def overview(db: Session, config: BrokerConfig) -> dict[str, Any]:
    """The dashboard: sessions now, hosts by state, pools with spares and capacity, logons per minute."""
    now = utcnow()
    return {
        "at": now.isoformat(),
        "sessions_active": active_sessions(db),
        "hosts": host_states(db),
        "pools": [pool_overview(db, pool, config) for pool in config.pools],
        "logons_last_minute": logons_since(db, now - dt.timedelta(minutes=1)),
        "logons_per_minute_last_hour": round(logons_since(db, now - dt.timedelta(hours=1)) / 60, 2),
    }


# -- pools ------------------------------------------------------------------------------------------


def pool_overview(db: Session, pool: PoolSettings, config: BrokerConfig) -> dict[str, Any]:
    """A pool's sizes, what it holds now, the image version new desktops get and its latest rollout."""
    counts = pool_counts(db, pool)
    status = rollout_status(db, pool, config.images)
    return {
        "name": pool.name,
        "display_name": pool.display_name,
        "kind": pool.kind,
        "sizes": {"min_size": pool.min_size, "max_size": pool.max_size, "spares": pool.spares},
        "desktops": {
            "total": counts.total,
            "spare": counts.spare,
            "spare_ready": counts.spare_ready,
            "in_use": counts.in_use,
        },
        # How many more desktops the pool may start (None: no max_size, bounded by the hosts only).
        "headroom": None if pool.max_size is None else max(pool.max_size - counts.total, 0),
        "image": status["image"],
        "rollout": status["rollout"],
    }


# -- sessions ---------------------------------------------------------------------------------------


class SessionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, max_length=128, description="user name, or the start of one")
    state: str | None = Field(None, pattern=r"^(active|ended)$", description="active or ended")
    limit: int = Field(100, ge=1, le=MAX_ROWS)


def search_sessions(db: Session, query: SessionQuery) -> list[dict[str, Any]]:
    """Desktop sessions, newest first, of users whose name starts with `query.user`."""
    statement = (
        select(DesktopSession, Desktop)
        .join(Desktop, Desktop.id == DesktopSession.desktop_id)
        .order_by(DesktopSession.started_at.desc(), DesktopSession.id)
        .limit(query.limit)
    )
    if query.user:
        statement = statement.where(DesktopSession.username.startswith(query.user, autoescape=True))
    if query.state:
        statement = statement.where(DesktopSession.state == query.state)
    return [_session_row(session, desktop) for session, desktop in db.execute(statement)]


def _session_row(session: DesktopSession, desktop: Desktop) -> dict[str, Any]:
    return {
        "id": session.id,
        "username": session.username,
        "pool": desktop.pool_name,
        "desktop": desktop.domain_name,
        "host": desktop.host_name,
        "client_ip": session.client_ip,
        "state": session.state,
        "started_at": _iso(session.started_at),
        "ended_at": _iso(session.ended_at),
        "last_input_at": _iso(session.last_input_at),
    }


# -- the audit log ----------------------------------------------------------------------------------


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, max_length=128, description="who acted, or whom it was done to (exact)")
    action: str | None = Field(None, max_length=64, description="the action, e.g. login or host_change")
    since: dt.datetime | None = Field(None, description="events at or after this time (ISO 8601)")
    until: dt.datetime | None = Field(None, description="events before this time (ISO 8601)")
    limit: int = Field(200, ge=1, le=MAX_ROWS)


def _utc(value: dt.datetime) -> dt.datetime:
    # A time without an offset is taken as UTC, the time zone the log is kept in.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def search_audit(db: Session, query: AuditQuery) -> list[dict[str, Any]]:
    """Audit events, newest first, matching every filter given."""
    statement = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(query.limit)
    if query.user:
        statement = statement.where(
            (AuditEvent.actor == query.user)
            | (AuditEvent.target == query.user)
            # A logoff on someone's behalf names the pool as target and its user in the detail.
            | (AuditEvent.detail["user"].as_string() == query.user)
        )
    if query.action:
        statement = statement.where(AuditEvent.action == query.action)
    if query.since:
        statement = statement.where(AuditEvent.at >= _utc(query.since))
    if query.until:
        statement = statement.where(AuditEvent.at < _utc(query.until))
    return [audit_row(event) for event in db.scalars(statement)]


def audit_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": _iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "result": event.result,
        "target": event.target,
        "source_ip": event.source_ip,
        "detail": event.detail or {},
    }


def audit_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV (RFC 4180, CRLF line ends) with a UTF-8 byte order mark, details as JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row, column) for column in CSV_COLUMNS])
    return UTF8_BOM + out.getvalue()


def _csv_cell(row: dict[str, Any], column: str) -> str:

    value = row[column]
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if column == "detail" else str(value or "")
    # A cell starting with = + - @ is a formula to a spreadsheet (CSV injection); a leading quote defuses it.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def record_export(db: Session, actor: str, client_ip: str, query: AuditQuery, rows: int) -> None:
    """Exporting the audit log is itself audited: who took which part of it."""
    detail = {key: str(value) for key, value in query.model_dump(exclude_none=True).items()}
    db.add(
        AuditEvent(
            actor=actor,
            action="audit_export",
            result="success",
            target="audit_events",
            source_ip=client_ip,
            detail={**detail, "rows": rows},
        )
    )
