"""Image rollouts: move a pool to another image version through canary desktops, then promote or roll back.

An administrator asks (REST API or `vdi pool rollout`); the request is a row in `rollouts` (state
"pending"), so the command line needs no running broker and a broker restart loses nothing. The rollout
manager, one periodic task per broker, drives every unfinished rollout:

    pending ─▶ creating ─▶ canary ─▶ promoted
                  │           │
                  └───────────┴──▶ rolling_back ─▶ rolled_back

- creating: the canary desktops (N, or N % of the pool's desktops, at least 1) are placed and booted on the
  new version like spares, named `vdi-<pool>-canary-r<id>-<hex>`; no user is given one (broker/desktops.py
  `spare_conditions`).
- canary: each pass looks at every canary: the desktop runs, its VNC display answers `RFB`, and its host's
  provider says it is ready (`readiness`; for libvirt, the ready marker on its serial console: the demo
  guest's `smartwork-vdi: desktop ready`, or a getty's `<host> login:`). A crash the provider reports
  ("Kernel panic" on the console), a desktop that stopped, or one that failed to start is a failure at
  once; anything not ready at the deadline (counted from the request) is one too.
- promoted: new desktops of the pool use the version (it wins over `image_version` in the file); canaries
  stay as spares up to the pool's `spares`; the pool manager replaces older spares, floating desktops go at
  logoff as always, dedicated ones at their next logoff or when an administrator moves them.
- rolled back: every canary is destroyed (domain and volumes), the pool stays where it was, and the
  reason names the desktop and what failed, with the last line it showed.

A rollout in "canary" when a broker restarts is simply checked again by the next pass (the deadline is in
the database); one left "creating" by a broker that stopped is rolled back once its deadline has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker import errors
from broker.config import SESSION_KINDS, PoolSettings
from broker.db import Database, move_state
from broker.db.models import AuditEvent, Desktop, DesktopSession, Host, Rollout, utcnow
from broker.desktops import DesktopService, DesktopView, canary_owner, domain_prefix
from broker.image_catalog import Catalog, CatalogError
from broker.placement.claim import HOLDING_STATES
from broker.pool_images import BUILT_IN_IMAGES, configured_version, image_ref, promoted_rollout
from broker.pool_task import PoolTask
from images.boot import ImageError
from images.config import ImageSettings
from monitoring.metrics import (
    CANARY_READY_SECONDS,
    POOL_ROLLOUT_STATE,
    ROLLOUTS_FINISHED,
    RolloutResult,
    RolloutState,
)

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 2.0
# A rollout left "creating" this long past its deadline belongs to a broker that stopped mid-way.
CREATOR_GRACE_S = 30.0
RFB_PROBE_TIMEOUT_S = 3.0
ACTIVE_STATES = ("pending", "creating", "canary", "rolling_back")
ACTOR = "rollout"
CANARY_SPEC = re.compile(r"^([1-9][0-9]{0,3})(%?)$")


# -- errors and requests -------------------------------------------------------------------------------


class RolloutInProgress(errors.Conflict):
    reason = "rollout_in_progress"
    message = "The pool already has a rollout in progress."


class AlreadyOnVersion(errors.Conflict):
    reason = "already_on_version"


class NoRollout(errors.NotFound):
    reason = "no_rollout"
    message = "The pool has had no rollout."


class UnknownDesktop(errors.NotFound):
    reason = "unknown_desktop"
    message = "There is no such desktop."


class DesktopCurrent(errors.Conflict):
    reason = "desktop_current"


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, description="catalog version of the pool's image")
    canary: str = Field("1", description="canary desktops: a count (1) or a share of the pool's (20%)")
    deadline_s: int = Field(300, ge=10, le=3600, description="seconds for every canary to show ready")

    @field_validator("canary", mode="before")
    @classmethod
    def _canary_share(cls, value: Any) -> str:
        text = str(value).strip()
        match = CANARY_SPEC.match(text)
        if match is None or (match.group(2) and int(match.group(1)) > 100):
            raise ValueError("a count like 1 or a share like 20% (1 to 100 %)")
        return text


def canary_count(spec: str, pool_desktops: int) -> int:
    """How many canaries `spec` asks for: a count as is, a share of the pool's desktops rounded up (≥ 1)."""
    number, percent = CANARY_SPEC.match(spec).groups()
    if not percent:
        return int(number)
    return max(1, math.ceil(pool_desktops * int(number) / 100))


@dataclass(frozen=True)
class RolloutView:
    id: int
    pool: str
    image: str
    version: str
    from_image: str
    state: str
    canary: str
    canary_count: int
    canaries: list[str]
    deadline_s: int
    requested_by: str
    created_at: dt.datetime
    deadline_at: dt.datetime
    finished_at: dt.datetime | None
    reason: str | None

    @classmethod
    def of(cls, row: Rollout) -> RolloutView:
        return cls(
            *(row.id, row.pool_name, row.image_name, row.version, row.from_image, row.state, row.canary),
            *(row.canary_count, list(row.canaries or []), row.deadline_s, row.requested_by),
            *(row.created_at, row.deadline_at, row.finished_at, row.reason),
        )

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "pool": self.pool,
            "image": self.image,
            "version": self.version,
            "from_image": self.from_image,
            "state": self.state,
            "canary": self.canary,
            "canary_count": self.canary_count,
            "canaries": self.canaries,
            "deadline_s": self.deadline_s,
            "requested_by": self.requested_by,
            "created_at": self.created_at.isoformat(),
            "deadline_at": self.deadline_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "reason": self.reason,
        }


# -- database work (run in Database.run's worker thread, or by the command line) --------------------


def _audit(actor: str, action: str, result: str, target: str, client_ip: str, **detail: Any) -> AuditEvent:
    return AuditEvent(
        actor=actor, action=action, result=result, target=target, source_ip=client_ip, detail=detail
    )


def current_ref(db: Session, pool: PoolSettings, settings: ImageSettings) -> str:
    """ "name:version" new desktops of the pool get now (what a rollout moves the pool away from)."""
    version = configured_version(db, pool)
    if version is None and pool.image in BUILT_IN_IMAGES:
        try:
            version = BUILT_IN_IMAGES[pool.image](settings).version
        except ImageError:
            version = "not-built"
    elif version is None:
        try:
            version = Catalog.show(db, pool.image).version
        except CatalogError:
            version = "missing"
    return image_ref(pool.image, version)


def begin_rollout(
    db: Session, pool: PoolSettings, request: RolloutRequest, current: str, actor: str, client_ip: str
) -> RolloutView:
    """Record a pending rollout after checking it; every refusal names the field and records nothing."""
    if pool.kind in SESSION_KINDS:
        raise errors.InvalidField(
            f"pool: {pool.name} is a pool of kind {pool.kind}: its sessions start from no image", field="pool"
        )
    active = db.scalars(
        select(Rollout).where(Rollout.pool_name == pool.name, Rollout.state.in_(ACTIVE_STATES))
    ).first()
    if active is not None:
        raise RolloutInProgress(
            f"pool: {pool.name} already has rollout {active.id} to {active.version} ({active.state}); "
            "wait until it is promoted or rolled back.",
            field="pool",
            pool=pool.name,
            rollout=str(active.id),
            version=active.version,
            state=active.state,
        )
    try:
        Catalog.show(db, pool.image, request.version)
    except CatalogError as exc:
        raise errors.InvalidField(f"version: {exc.message} in the image catalog", field="version") from None
    target = image_ref(pool.image, request.version)
    if target == current:
        raise AlreadyOnVersion(
            f"version: pool {pool.name} is already on {target}.",
            field="version",
            pool=pool.name,
            image=target,
        )
    holding = (Desktop.pool_name == pool.name) & Desktop.state.in_(HOLDING_STATES)
    total = db.scalar(select(func.count()).select_from(Desktop).where(holding))
    now = utcnow()
    row = Rollout(
        pool_name=pool.name,
        image_name=pool.image,
        version=request.version,
        from_image=current,
        state="pending",
        canary=request.canary,
        canary_count=canary_count(request.canary, total),
        canaries=[],
        deadline_s=request.deadline_s,
        requested_by=actor,
        created_at=now,
        deadline_at=now + dt.timedelta(seconds=request.deadline_s),
    )
    db.add(row)
    db.flush()
    detail = {"rollout": row.id, "version": target, "from": current, "canary": request.canary}
    db.add(_audit(actor, "rollout.start", "success", pool.name, client_ip, **detail))
    log.info(
        "pool %s: rollout %d to %s requested by %s (canary %s)", pool.name, row.id, target, actor, row.canary
    )
    return RolloutView.of(row)


def latest_rollout(db: Session, pool: str) -> RolloutView:
    row = db.scalars(select(Rollout).where(Rollout.pool_name == pool).order_by(Rollout.id.desc())).first()
    if row is None:
        raise NoRollout(f"Pool {pool} has had no rollout.", pool=pool)
    return RolloutView.of(row)


FINISHED_STATES = ("promoted", "rolled_back")


def rollout_progress(db: Session, rollout: RolloutView) -> dict[str, Any]:
    """How far the rollout has come: canaries started of those asked for, and the pool's desktops
    (in use, spare or starting) on the rollout's version of all it holds: after a promotion the rest are
    replaced as spares are renewed and users log off."""
    holding = (Desktop.pool_name == rollout.pool) & Desktop.state.in_(HOLDING_STATES)
    counted = select(func.count()).select_from(Desktop)
    target = image_ref(rollout.image, rollout.version)
    return {
        "canaries_started": len(rollout.canaries),
        "canaries_wanted": rollout.canary_count,
        "desktops_on_version": db.scalar(counted.where(holding, Desktop.image == target)),
        "desktops_total": db.scalar(counted.where(holding)),
        "finished": rollout.state in FINISHED_STATES,
    }


def rollout_status(db: Session, pool: PoolSettings, settings: ImageSettings) -> dict[str, Any]:
    """The pool's image now and its newest rollout with its progress (None before the first)."""
    try:
        rollout = latest_rollout(db, pool.name)
    except NoRollout:
        status = None
    else:
        status = rollout.as_json() | {"progress": rollout_progress(db, rollout)}
    return {"pool": pool.name, "image": current_ref(db, pool, settings), "rollout": status}


def unfinished_rollouts(db: Session) -> list[RolloutView]:
    rows = db.scalars(select(Rollout).where(Rollout.state.in_(ACTIVE_STATES)).order_by(Rollout.id))
    return [RolloutView.of(row) for row in rows]


def newest_states(db: Session) -> dict[str, str]:
    newest = select(func.max(Rollout.id)).group_by(Rollout.pool_name)
    rows = db.execute(select(Rollout.pool_name, Rollout.state).where(Rollout.id.in_(newest)))
    return dict(rows.all())


def transition(db: Session, rollout_id: int, from_states: tuple[str, ...], to: str, **values: Any) -> bool:
    """Move the rollout on only if it is still in one of `from_states`: several brokers may look at it."""
    return move_state(db, Rollout, rollout_id, from_states, to, **values)


def add_canary(db: Session, rollout_id: int, name: str) -> None:
    row = db.get(Rollout, rollout_id)
    row.canaries = [*(row.canaries or []), name]


def canary_desktops(db: Session, rollout: RolloutView) -> list[Desktop]:
    """The rollout's canaries the database still has (by name, so one a dead broker left is found too)."""
    prefix = domain_prefix(rollout.pool, canary_owner(rollout.id))
    query = select(Desktop).where(
        Desktop.pool_name == rollout.pool,
        Desktop.domain_name.like(prefix + "%"),
        Desktop.assigned_user.is_(None),
        Desktop.state != "deleted",
    )
    return list(db.scalars(query.order_by(Desktop.id)))


def ssh_console_hosts(db: Session) -> set[str]:
    return set(db.scalars(select(Host.name).where(Host.console_access == "ssh")))


def record_finish(db: Session, rollout: RolloutView, from_state: str, state: str, reason: str) -> bool:
    """Finish the rollout if it is still in `from_state`, with its audit event; False if it was not."""
    row = db.get(Rollout, rollout.id)
    if row.state != from_state:
        return False
    row.state, row.reason, row.finished_at = state, reason, utcnow()
    action, result = (
        ("rollout.promote", "success") if state == "promoted" else ("rollout.rollback", "failure")
    )
    target = image_ref(rollout.image, rollout.version)
    detail = {"rollout": rollout.id, "version": target, "from": rollout.from_image, "reason": reason}
    db.add(_audit(ACTOR, action, result, rollout.pool, "", **detail))
    return True


def outdated_spares(db: Session, pool: PoolSettings) -> list[Desktop]:
    """Running unassigned desktops of a version older than the promoted one."""
    promoted = promoted_rollout(db, pool)
    if promoted is None:
        return []
    query = select(Desktop).where(
        Desktop.pool_name == pool.name,
        Desktop.assigned_user.is_(None),
        Desktop.state == "running",
        Desktop.image != image_ref(promoted.image_name, promoted.version),
    )
    return list(db.scalars(query.order_by(Desktop.id)))


def claim_spare_for_removal(db: Session, desktop_id: int) -> bool:
    # Conditional: a user may be taking the same spare right now (broker/desktops.py take_spare).
    query = update(Desktop).where(
        Desktop.id == desktop_id, Desktop.assigned_user.is_(None), Desktop.state == "running"
    )
    return bool(db.execute(query.values(state="deleted")).rowcount)


def mark_removal_failed(db: Session, desktop_id: int, error: str) -> None:
    desktop = db.get(Desktop, desktop_id)
    desktop.state, desktop.error = "error", error


def movable_desktop(db: Session, desktop_id: int) -> tuple[Desktop, str | None]:
    desktop = db.get(Desktop, desktop_id)
    if desktop is None or desktop.state not in HOLDING_STATES:
        raise UnknownDesktop(f"There is no desktop {desktop_id} in use.", field="desktop")
    session_id = db.scalar(
        select(DesktopSession.id).where(
            DesktopSession.desktop_id == desktop_id, DesktopSession.state == "active"
        )
    )
    return desktop, session_id


def record_move(db: Session, actor: str, client_ip: str, pool: str, **detail: Any) -> None:
    db.add(_audit(actor, "desktop.move", "success", pool, client_ip, **detail))


# -- checking a canary ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryCheck:
    name: str
    ready: bool = False
    failure: str | None = None  # set: the rollout fails now
    waiting_for: str = ""  # what is still missing, for the deadline's reason
    last_output: str = ""  # the last line the desktop showed


async def rfb_answers(host: str | None, port: int | None) -> bool:
    """Whether a VNC server greets on the desktop's display (RFC 6143 §7.1.1: "RFB xxx.yyy\\n")."""
    if not host or not port:
        return False
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), RFB_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    try:
        greeting = await asyncio.wait_for(reader.readexactly(12), RFB_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return greeting.startswith(b"RFB ")


# -- the manager ---------------------------------------------------------------------------------------


def publish_states(pools: list[str], states: dict[str, str]) -> None:
    for pool in pools:
        current = states.get(pool, RolloutState.NONE.value)
        for state in RolloutState:
            POOL_ROLLOUT_STATE.labels(pool=pool, state=state.value).set(1 if state.value == current else 0)


class RolloutManager(PoolTask):
    """Drives unfinished rollouts on the broker's loop; `kick()` after a request runs a pass at once."""

    name = "rollout-manager"
    pass_interval_s = PASS_INTERVAL_S

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._creating: dict[int, asyncio.Task] = {}
        publish_states([pool.name for pool in self.config.pools], {})

    async def stop(self) -> None:
        for task in list(self._creating.values()):
            task.cancel()
        await super().stop()

    # -- requests from the API -------------------------------------------------------------------------

    async def request(
        self, pool: PoolSettings, request: RolloutRequest, actor: str, client_ip: str
    ) -> RolloutView:
        current = await self.db.run(partial(current_ref, pool=pool, settings=self.config.images))
        view = await self.db.run(
            partial(
                begin_rollout, pool=pool, request=request, current=current, actor=actor, client_ip=client_ip
            )
        )
        self.kick()
        return view

    async def status(self, pool: PoolSettings) -> dict:
        return await self.db.run(partial(rollout_status, pool=pool, settings=self.config.images))

    async def move_desktop(self, desktop_id: int, actor: str, client_ip: str) -> DesktopView | None:
        """Move one desktop to its pool's promoted version now: its session (if any) is logged off, the
        desktop destroyed and, if it had a user, a new one started for them. Returns the new desktop."""
        desktop, session_id = await self.db.run(partial(movable_desktop, desktop_id=desktop_id))
        pool = self.desktops.pool(desktop.pool_name)
        promoted = await self.db.run(partial(promoted_rollout, pool=pool))
        target = image_ref(promoted.image_name, promoted.version) if promoted else None
        if target is None or desktop.image == target:
            raise DesktopCurrent(
                f"desktop: {desktop.domain_name} is already on the version its pool uses ({desktop.image}).",
                field="desktop",
                desktop=desktop.domain_name,
                image=desktop.image,
            )
        if session_id is not None:
            await self.desktops.end_session(session_id, actor, "move_logoff", client_ip)
        else:
            await self.desktops.retire(desktop)
        owner = desktop.assigned_user
        detail = {"desktop": desktop.domain_name, "from": desktop.image, "to": target, "user": owner}
        await self.db.run(partial(record_move, actor=actor, client_ip=client_ip, pool=pool.name, **detail))
        log.info(
            "desktop %s of pool %s moved from %s to %s by %s",
            desktop.domain_name,
            pool.name,
            desktop.image,
            target,
            actor,
        )
        if owner is None:
            self.desktops.pool_changed()
            return None
        return DesktopView.of(await self.desktops.start_for(pool, owner, actor, client_ip))

    # -- passes ----------------------------------------------------------------------------------------

    async def run_once(self) -> None:
        for rollout in await self.db.run(unfinished_rollouts):
            try:
                await self._advance(rollout)
            except errors.BrokerError as exc:
                log.warning(
                    "rollout %d of pool %s: %s; the next pass looks again",
                    rollout.id,
                    rollout.pool,
                    exc.message,
                )
        publish_states([pool.name for pool in self.config.pools], await self.db.run(newest_states))

    async def _advance(self, rollout: RolloutView) -> None:
        pool = self.config.pool(rollout.pool)
        if rollout.state == "rolling_back" or pool is None:
            await self._roll_back(rollout, rollout.reason or f"pool {rollout.pool} is no longer configured")
        elif rollout.state == "pending":
            await self._begin_creating(rollout, pool)
        elif rollout.state == "creating":
            if rollout.id not in self._creating and self._past(rollout, CREATOR_GRACE_S):
                await self._roll_back(
                    rollout, "the broker starting the canary desktops stopped before it finished"
                )
        elif rollout.state == "canary":
            await self._check(rollout, pool)

    @staticmethod
    def _past(rollout: RolloutView, grace_s: float = 0.0) -> bool:
        return utcnow() > rollout.deadline_at + dt.timedelta(seconds=grace_s)

    async def _begin_creating(self, rollout: RolloutView, pool: PoolSettings) -> None:
        # The deadline runs from now: a request made while no broker ran must not be late before it starts.
        deadline_at = utcnow() + dt.timedelta(seconds=rollout.deadline_s)
        if not await self.db.run(
            partial(
                transition,
                rollout_id=rollout.id,
                from_states=("pending",),
                to="creating",
                deadline_at=deadline_at,
            )
        ):
            return  # another broker took it
        log.info(
            "pool %s: rollout %d starts %d canary desktop(s) of %s",
            pool.name,
            rollout.id,
            rollout.canary_count,
            rollout.version,
        )
        task = asyncio.get_running_loop().create_task(self._create_canaries(rollout, pool))
        self._creating[rollout.id] = task

    async def _create_canaries(self, rollout: RolloutView, pool: PoolSettings) -> None:
        try:
            image = await self.desktops.version_image(pool, rollout.image, rollout.version)
            for _ in range(rollout.canary_count):
                desktop = await self.desktops.start_canary(pool, image, rollout.id)
                await self.db.run(partial(add_canary, rollout_id=rollout.id, name=desktop.domain_name))
        except errors.BrokerError as exc:
            await self._roll_back(
                rollout, f"a canary desktop of {rollout.version} could not start: {exc.message}"
            )
        except Exception as exc:
            log.exception("rollout %d: starting canaries failed", rollout.id)
            await self._roll_back(
                rollout, f"a canary desktop of {rollout.version} could not start ({type(exc).__name__})"
            )
        else:
            await self.db.run(
                partial(transition, rollout_id=rollout.id, from_states=("creating",), to="canary")
            )
        finally:
            self._creating.pop(rollout.id, None)
            self.kick()

    async def _check(self, rollout: RolloutView, pool: PoolSettings) -> None:
        desktops = await self.db.run(partial(canary_desktops, rollout=rollout))
        if not desktops:
            await self._roll_back(rollout, "its canary desktops are gone")
            return
        ssh_hosts = await self.db.run(ssh_console_hosts)
        checks = [await self._check_canary(desktop, desktop.host_name in ssh_hosts) for desktop in desktops]
        failed = next((check for check in checks if check.failure), None)
        if failed is not None:
            await self._roll_back(rollout, failed.failure)
        elif all(check.ready for check in checks):
            await self._promote(rollout, pool, desktops)
        elif self._past(rollout):
            late = next(check for check in checks if not check.ready)
            reason = (
                f"canary desktop {late.name} did not show ready within {rollout.deadline_s} s "
                f"(waiting for {late.waiting_for}); console: {late.last_output or '(empty)'}"
            )
            await self._roll_back(rollout, reason)

    async def _check_canary(self, desktop: Desktop, display_via_ssh: bool) -> CanaryCheck:
        name = desktop.domain_name
        if desktop.state == "provisioning":
            return CanaryCheck(name, waiting_for="the desktop to start")
        if desktop.state != "running":
            why = f": {desktop.error}" if desktop.error else ""
            return CanaryCheck(name, failure=f"canary desktop {name} is {desktop.state}{why}")
        try:
            actual = await self.desktops.desktop_state(desktop)
            readiness = await self.desktops.readiness(desktop)
        except errors.BrokerError as exc:
            return CanaryCheck(name, waiting_for=f"its host ({exc.message})")
        if actual != "running":
            return CanaryCheck(name, failure=f"canary desktop {name} is {actual} on host {desktop.host_name}")
        if readiness.crashed:
            return CanaryCheck(name, failure=f"canary desktop {name} crashed; console: {readiness.crashed}")
        # A display reached through the host's sshd (console_access = "ssh") is the gateway's to open.
        screen = display_via_ssh or await rfb_answers(desktop.vnc_host, desktop.vnc_port)
        missing = [
            what
            for what, ok in (
                ("its VNC display", screen),
                (readiness.waiting_for or "it to finish starting", readiness.ready),
            )
            if not ok
        ]
        return CanaryCheck(
            name, ready=not missing, waiting_for=" and ".join(missing), last_output=readiness.last_output
        )

    async def _promote(self, rollout: RolloutView, pool: PoolSettings, desktops: list[Desktop]) -> None:
        # Canaries beyond the pool's spares go before the promotion makes them takeable by users.
        for desktop in desktops[pool.spares :]:
            await self._remove(desktop)
        reason = f"all {len(desktops)} canary desktop(s) of {rollout.version} showed ready"
        finish = partial(record_finish, rollout=rollout, from_state="canary", state="promoted", reason=reason)
        if not await self.db.run(finish):
            return
        ROLLOUTS_FINISHED.labels(result=RolloutResult.PROMOTED.value).inc()
        CANARY_READY_SECONDS.observe((utcnow() - rollout.created_at).total_seconds())
        log.info("pool %s: rollout %d promoted %s: %s", pool.name, rollout.id, rollout.version, reason)
        self.desktops.pool_changed()

    async def _roll_back(self, rollout: RolloutView, reason: str) -> None:
        unfinished = ("pending", "creating", "canary", "rolling_back")
        won = await self.db.run(
            partial(
                transition, rollout_id=rollout.id, from_states=unfinished, to="rolling_back", reason=reason
            )
        )
        if not won:
            return
        leftovers = []
        for desktop in await self.db.run(partial(canary_desktops, rollout=rollout)):
            # A row in "error" failed to start, and the provider removes what a failed start made.
            if not await self._remove(desktop) and desktop.state != "error":
                leftovers.append(desktop.domain_name)
        if leftovers:
            reason += f" (not removed, host unreachable: {', '.join(leftovers)})"
        finish = partial(
            record_finish, rollout=rollout, from_state="rolling_back", state="rolled_back", reason=reason
        )
        if not await self.db.run(finish):
            return
        ROLLOUTS_FINISHED.labels(result=RolloutResult.ROLLED_BACK.value).inc()
        log.warning(
            "pool %s: rollout %d to %s rolled back: %s", rollout.pool, rollout.id, rollout.version, reason
        )

    async def _remove(self, desktop: Desktop) -> bool:
        """Destroy a desktop nobody uses; False (and the row marked "error") when its host would not."""
        try:
            await self.desktops.retire(desktop)
        except errors.BrokerError as exc:
            log.warning("cannot remove desktop %s: %s", desktop.domain_name, exc.message)
            await self.db.run(partial(mark_removal_failed, desktop_id=desktop.id, error=exc.message))
            return False
        return True


async def remove_spare(desktops: DesktopService, db: Database, desktop: Desktop, why: str) -> bool:
    """Destroy an unassigned running desktop unless a user takes it first; False if it was not removed
    (taken, or its host would not: then the row is marked "error")."""
    if not await db.run(partial(claim_spare_for_removal, desktop_id=desktop.id)):
        return False  # a user took it meanwhile: it goes at their logoff instead
    try:
        await desktops.destroy(desktop)
    except errors.BrokerError as exc:
        log.warning(
            "pool %s: cannot remove %s %s: %s", desktop.pool_name, why, desktop.domain_name, exc.message
        )
        await db.run(partial(mark_removal_failed, desktop_id=desktop.id, error=exc.message))
        return False
    return True


async def retire_outdated_spares(desktops: DesktopService, db: Database, pool: PoolSettings) -> int:
    """After a promotion: remove spares of older versions (the pool manager then starts new ones)."""
    removed = 0
    for desktop in await db.run(partial(outdated_spares, pool=pool)):
        if not await remove_spare(desktops, db, desktop, "old spare"):
            continue
        removed += 1
        log.info(
            "pool %s: spare %s of %s replaced after a rollout", pool.name, desktop.domain_name, desktop.image
        )
    return removed
