"""Power policy of dedicated pools: what happens to a kept desktop nobody is logged on to.

A dedicated desktop outlives logoff (docs/pools.md). With `power_policy = "suspend"` or `"shutoff"`, the
power manager suspends (memory saved to the host's disk) or shuts off each of the pool's assigned desktops
that has had no active session for `power_after_s`; connecting starts or resumes it again from the same
domain and overlay volume (DesktopService._power_on). A disconnect leaves the session active, so a
disconnected desktop is never powered off.

Both sides take the same per-user lock in DesktopService, so within one broker a connect never races a
power action; across brokers the conditional updates below decide, and a state a dead broker left
half-way ("stopping", "starting") is resolved by asking the hypervisor at the next connect.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker.config import PoolSettings
from broker.db.models import AuditEvent, Desktop, DesktopSession
from hypervisor.base import DisplayEndpoint
from hypervisor.provider import DesktopProvider
from monitoring.metrics import DESKTOPS_BY_POWER, POWER_ACTION_DURATION, PowerAction, PowerResult, PowerState

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 10.0
POWER_ACTOR = "power-policy"
# Kept desktops that are not running; a connect starts them again.
OFF_STATES = ("stopped", "suspended")
# While a power action runs on the host.
TRANSIT_STATES = ("stopping", "suspending", "starting")


def _stop(provider: DesktopProvider, domain_name: str, timeout_s: float) -> None:
    provider.stop_desktop(domain_name, timeout_s)


def _suspend(provider: DesktopProvider, domain_name: str, _timeout_s: float) -> None:
    provider.suspend_desktop(domain_name)


@dataclass(frozen=True)
class PowerOff:
    """How a policy powers a desktop off: the provider call (desktop name and the pool's shutdown
    timeout), and the states during and after it."""

    action: PowerAction
    apply: Callable[[DesktopProvider, str, float], None]
    transit: str
    final: str


POWER_OFF = {
    "shutoff": PowerOff(PowerAction.STOP, _stop, "stopping", "stopped"),
    "suspend": PowerOff(PowerAction.SUSPEND, _suspend, "suspending", "suspended"),
}


@dataclass(frozen=True)
class UnusedDesktop:
    id: int
    domain_name: str
    host_name: str | None
    user: str


# -- database work, run in Database.run's worker thread ----------------------------------------------


def _no_active_session():
    active = select(DesktopSession.id).where(
        DesktopSession.desktop_id == Desktop.id, DesktopSession.state == "active"
    )
    return ~active.exists()


def unused_desktops(db: Session, pool: PoolSettings, now: dt.datetime) -> list[UnusedDesktop]:
    """The pool's running assigned desktops whose last session ended `power_after_s` ago or more."""
    last_end = (
        select(func.max(DesktopSession.ended_at))
        .where(DesktopSession.desktop_id == Desktop.id)
        .scalar_subquery()
    )
    rows = db.execute(
        select(Desktop, last_end).where(
            Desktop.pool_name == pool.name,
            Desktop.assigned_user.is_not(None),
            Desktop.state == "running",
            _no_active_session(),
        )
    ).all()
    return [
        UnusedDesktop(desktop.id, desktop.domain_name, desktop.host_name, desktop.assigned_user)
        for desktop, ended in rows
        if (now - (ended or desktop.created_at)).total_seconds() >= pool.power_after_s
    ]


def begin_power_off(db: Session, desktop_id: int, transit: str) -> bool:
    """running → `transit`, only while nobody holds a session on it; False if that changed meanwhile."""
    changed = db.execute(
        update(Desktop)
        .where(Desktop.id == desktop_id, Desktop.state == "running", _no_active_session())
        .values(state=transit)
        .execution_options(synchronize_session=False)
    ).rowcount
    return bool(changed)


def set_state(db: Session, desktop_id: int, state: str) -> Desktop:
    desktop = db.get(Desktop, desktop_id)
    desktop.state = state
    return desktop


def record_power_action(
    db: Session,
    desktop_id: int,
    state: str,
    action: PowerAction,
    actor: str,
    error: str | None = None,
    endpoint: DisplayEndpoint | None = None,
    client_ip: str = "",
    **detail: Any,
) -> Desktop:
    """Set the desktop's state after a power action (its display when it runs again) and audit it."""
    desktop = db.get(Desktop, desktop_id)
    desktop.state = state
    if endpoint is not None:
        desktop.vnc_host, desktop.vnc_port = endpoint.host, endpoint.port
    elif state in OFF_STATES:
        desktop.vnc_port = None  # it gets a new port when it starts again
    detail |= {"desktop": desktop.domain_name, "host": desktop.host_name, "user": desktop.assigned_user}
    if error is not None:
        detail["error"] = error
    db.add(
        AuditEvent(
            actor=actor,
            action=f"power_{action.value}",
            result="error" if error is not None else "success",
            target=desktop.pool_name,
            source_ip=client_ip,
            detail=detail,
        )
    )
    return desktop


def power_counts(db: Session, pool: str) -> dict[PowerState, int]:
    rows = db.execute(
        select(Desktop.state, func.count())
        .where(Desktop.pool_name == pool, Desktop.assigned_user.is_not(None))
        .group_by(Desktop.state)
    ).all()
    by_state = dict(rows)
    return {
        PowerState.RUNNING: by_state.get("running", 0),
        PowerState.STOPPED: by_state.get("stopped", 0),
        PowerState.SUSPENDED: by_state.get("suspended", 0),
    }


def publish_power(pool: str, counts: dict[PowerState, int]) -> None:
    for state, count in counts.items():
        DESKTOPS_BY_POWER.labels(pool=pool, state=state.value).set(count)


def observe_power_action(action: PowerAction, ok: bool, seconds: float) -> None:
    result = PowerResult.SUCCESS if ok else PowerResult.ERROR
    POWER_ACTION_DURATION.labels(action=action.value, result=result.value).observe(seconds)
