"""Connect and log off: which desktop a user gets in a pool, and its life from placement to logoff.

Connect reuses the user's running desktop in the pool, or places a new one on a host (claimed
under optimistic concurrency), starts it through the host's desktop provider and opens a session.
Provider calls block (libvirt, SSH), so they run on a small executor, never on the loop.
A failed start leaves no half-made state: the provider removes the desktop, and the desktop row
is marked "error" so it holds no capacity and no session points at it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import secrets
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from broker import errors
from broker.attendance import record_arrival
from broker.auth import PortalUser, SessionUser, user_of
from broker.centers import arrival_at
from broker.config import SESSION_KINDS, BrokerConfig, PoolSettings
from broker.console_route import console_route
from broker.db import Database
from broker.db.models import (
    AuditEvent,
    ConsoleToken,
    Desktop,
    DesktopSession,
    Host,
    insert_audit_event,
    utcnow,
)
from broker.db.tokens import ConsolePolicy, issue_token
from broker.db.vnc_passwords import VncPasswordBox, new_vnc_password
from broker.entitlement import check_entitled, entitled_pools
from broker.inventory import host_settings, providers_for
from broker.placement import HostCandidate, PlacementEngine, PlacementRequest
from broker.placement.claim import HOLDING_STATES, load_host_candidates
from broker.placement.worker import ClaimsKeptFailing, NoHostFits, PlacementGuard, PlacementWorker
from broker.pool_images import PoolImages, catalog_row, image_ref, promoted_rollout, version_boot_image
from broker.power import (
    OFF_STATES,
    POWER_ACTOR,
    TRANSIT_STATES,
    PowerOff,
    UnusedDesktop,
    begin_power_off,
    observe_power_action,
    record_power_action,
    set_state,
)
from hypervisor.base import BootImage, DesktopSpec, DisplayEndpoint, HypervisorError, Readiness
from hypervisor.base import HostUnreachable as ProviderHostUnreachable
from hypervisor.provider import DesktopProvider
from images.boot import ImageError
from images.built_in import BUILT_IN_IMAGES
from images.config import ImageSettings
from monitoring import logs
from monitoring.metrics import (
    CONNECT_DURATION,
    CONNECTS_JOINED,
    CONSOLE_TOKENS_ISSUED,
    CONSOLE_TOKENS_REFUSED,
    DESKTOP_START_FAILURES,
    DESKTOPS_STARTED,
    SESSIONS_ACTIVE,
    ConnectResult,
    PowerAction,
    TokenRefusal,
)

log = logging.getLogger(__name__)


# A desktop still "provisioning" after this long belongs to a broker that died mid-start.
STALE_PROVISIONING_S = 600
PROVIDER_THREADS = 4
# Audit actor for desktops the pool manager starts on no user's behalf.
SPARE_ACTOR = "pool-manager"

ImageResolver = Callable[[PoolSettings], BootImage]
T = TypeVar("T")


# -- views returned to handlers -------------------------------------------------------------------


@dataclass(frozen=True)
class DesktopView:
    id: int
    name: str
    state: str
    pool: str

    @classmethod
    def of(cls, desktop: Desktop) -> DesktopView:
        return cls(desktop.id, desktop.domain_name, desktop.state, desktop.pool_name)

    def as_json(self) -> dict:
        return {"id": self.id, "name": self.name, "state": self.state, "pool": self.pool}


@dataclass(frozen=True)
class SessionView:
    id: str
    state: str
    desktop: DesktopView
    started_at: dt.datetime
    ended_at: dt.datetime | None = None

    @property
    def console_url(self) -> str:
        return f"/console/{self.id}"

    def as_json(self) -> dict:
        return {
            "session_id": self.id,
            "state": self.state,
            "desktop": self.desktop.as_json(),
            "console_url": self.console_url,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


@dataclass(frozen=True)
class PoolView:
    name: str
    display_name: str
    desktop: DesktopView | None = None
    session_id: str | None = None

    @property
    def state(self) -> str:
        return self.desktop.state if self.desktop else "none"

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "state": self.state,
            "desktop": self.desktop.as_json() if self.desktop else None,
            "session_id": self.session_id,
        }


@dataclass(frozen=True)
class ConsoleGrant:
    token: str
    gateway_url: str
    expires_in: int

    def as_json(self) -> dict:
        return {"token": self.token, "gateway_url": self.gateway_url, "expires_in": self.expires_in}

    def __repr__(self) -> str:
        # Keeps the token out of any log line or traceback that prints the grant.
        return f"ConsoleGrant(token='***', gateway_url={self.gateway_url!r}, expires_in={self.expires_in})"


# -- images and names -----------------------------------------------------------------------------


def boot_image_for(settings: ImageSettings, pool: PoolSettings) -> BootImage:
    """A built-in image (images/built_in.py) for a pool that names no catalog version."""
    find = BUILT_IN_IMAGES.get(pool.image)
    if find is None:
        detail = f"pool {pool.name} uses unknown image {pool.image!r}"
        raise errors.ImageUnavailable(f"The desktop image is not available: {detail}.", detail=detail)
    try:
        return BootImage.of(find(settings))
    except ImageError as exc:
        raise errors.ImageUnavailable(f"The desktop image is not available: {exc}", detail=str(exc)) from None


def _name_part(text: str, limit: int) -> str:
    part = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return part[:limit].strip("-") or "x"


def domain_prefix(pool: str, owner: str) -> str:
    return f"vdi-{_name_part(pool, 40)}-{_name_part(owner, 32)}-"


def domain_name_for(pool: str, username: str) -> str:
    """`vdi-<pool>-<user>-<6 hex>`: readable in virsh, unique, and safe as a libvirt name and a file name."""
    return domain_prefix(pool, username) + secrets.token_hex(3)


def canary_owner(rollout_id: int) -> str:
    """What stands for the owner in a canary desktop's name: `vdi-<pool>-canary-r<id>-<6 hex>`."""
    return f"canary-r{rollout_id}"


def spare_conditions(db: Session, pool: PoolSettings) -> list:
    """The pool's unassigned desktops a user may be given (broker/rollout.py): never a canary of a
    rollout that is not promoted, and after a promotion only desktops of the promoted version."""
    spares = [Desktop.pool_name == pool.name, Desktop.assigned_user.is_(None)]
    # Not domain_prefix(pool, "canary-r"), which ends in "-" and so matches no `canary-r<id>-` name.
    canary = Desktop.domain_name.like(domain_prefix(pool.name, "canary").removesuffix("-") + "-r%")
    promoted = promoted_rollout(db, pool)
    if promoted is None:
        return [*spares, ~canary]
    own_canaries = Desktop.domain_name.like(domain_prefix(pool.name, canary_owner(promoted.id)) + "%")
    return [
        *spares,
        ~canary | own_canaries,
        Desktop.image == image_ref(promoted.image_name, promoted.version),
    ]


def outdated(db: Session, pool: PoolSettings, desktop: Desktop) -> bool:
    """Whether a promoted rollout moved the pool to another version than the desktop's."""
    promoted = promoted_rollout(db, pool)
    return promoted is not None and desktop.image != image_ref(promoted.image_name, promoted.version)


def connect_result(exc: errors.BrokerError) -> ConnectResult | None:
    if isinstance(exc, errors.Forbidden):
        return ConnectResult.FORBIDDEN
    if isinstance(exc, errors.NoCapacity | errors.PlacementConflict):
        return ConnectResult.NO_CAPACITY
    if isinstance(exc, errors.ServiceUnavailable):
        return ConnectResult.HYPERVISOR_ERROR
    return None


def broker_error_for(exc: HypervisorError) -> errors.ServiceUnavailable:
    # str(exc) names the host and never a secret (hypervisor.base's contract), so the user sees it.
    cls = errors.HostUnreachable if isinstance(exc, ProviderHostUnreachable) else errors.HypervisorFailed
    return cls(str(exc), detail=str(exc), host=exc.host)


# -- database work, run in Database.run's worker thread ----------------------------------------


def _audit(actor: str, action: str, result: str, target: str, client_ip: str, **detail: Any) -> AuditEvent:
    return AuditEvent(**_audit_columns(actor, action, result, target, client_ip, **detail))


def _audit_columns(actor: str, action: str, result: str, target: str, client_ip: str, **detail: Any) -> dict:
    return {
        "actor": actor,
        "action": action,
        "result": result,
        "target": target,
        "source_ip": client_ip,
        "detail": detail,
    }


_SESSIONS = DesktopSession.__table__
# A new session row is written with every column (open_session sets them all on the new DesktopSession).
_SESSION_COLUMNS = tuple(column.key for column in _SESSIONS.c)


def find_current_desktop(db: Session, pool: str, username: str) -> Desktop | None:
    return db.scalars(
        select(Desktop)
        .where(
            Desktop.pool_name == pool, Desktop.assigned_user == username, Desktop.state.in_(HOLDING_STATES)
        )
        .order_by(Desktop.id.desc())
    ).first()


def take_spare(db: Session, pool: PoolSettings, username: str) -> Desktop | None:
    """Assign the pool's oldest running spare to the user, one that finished booting if there is one;
    None when there is none left to take."""
    # On PostgreSQL, a spare another broker is taking right now is skipped rather than waited for and
    # then lost (FOR UPDATE SKIP LOCKED); SQLite has one writer at a time and renders no such clause.
    spare = db.scalars(
        select(Desktop)
        .where(*spare_conditions(db, pool), Desktop.state == "running")
        .order_by(Desktop.ready_at.is_(None), Desktop.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Desktop)
    ).first()
    if spare is None:
        return None
    # Conditional on still being unassigned: another broker may take the same spare at the same time.
    taken = db.execute(
        update(Desktop)
        .where(Desktop.id == spare.id, Desktop.assigned_user.is_(None))
        .values(assigned_user=username)
    ).rowcount
    if not taken:
        return None
    # The row is locked by us (FOR UPDATE, or SQLite's one writer): the only column that changed is the
    # one just written, so no second read of the row (it was db.refresh: a SELECT per connect).
    set_committed_value(spare, "assigned_user", username)
    return spare


def current_or_spare(db: Session, pool: PoolSettings, username: str) -> tuple[Desktop | None, bool]:
    """Connect's first read, one transaction: the user's current desktop in the pool (False), else a spare
    just assigned to them (True), else (None, False)."""
    current = find_current_desktop(db, pool.name, username)
    if current is not None:
        return current, False
    spare = take_spare(db, pool, username)
    return spare, spare is not None


def load_candidates(db: Session, host_names: list[str]) -> list[HostCandidate]:
    return load_host_candidates(db, host_names)


def image_of(image: BootImage | None) -> str:
    """The "name:version" a desktop records; a session on a session host has no image."""
    return f"{image.name}:{image.version}" if image is not None else ""


def desktop_spec(
    pool: PoolSettings,
    domain_name: str,
    image: BootImage | None,
    owner: str | None,
    label: str,
    vnc_password: str | None = None,
) -> DesktopSpec:
    """What the host's provider is asked to start: a VM from the image, or a session of the owner's account.

    `vnc_password` is the desktop's sealed one, opened (broker.vnc_password_key): the gateway logs in with
    it, the browser never sees it. A session's Xvnc always asks for one, so without a key it gets a password
    nobody keeps, and its console cannot be opened.
    """
    if pool.kind not in SESSION_KINDS:
        return DesktopSpec(
            domain_name,
            image,
            memory_mib=pool.memory_mib,
            vcpus=pool.vcpus,
            label=label,
            vnc_password=vnc_password,
        )
    return DesktopSpec(
        domain_name,
        memory_mib=pool.memory_mib,
        vcpus=pool.vcpus,
        label=label,
        vnc_password=vnc_password or new_vnc_password(),
        user=owner or "",
        kind=pool.kind,
        command=tuple(pool.app_command or pool.session_command or ()),
        window_manager=tuple(pool.window_manager or ()),
        cpu_limit=pool.cpu_limit,
        memory_limit_mib=pool.memory_limit_mib,
    )


def placement_request(pool: PoolSettings, image: str) -> PlacementRequest:
    """What placement needs of a pool; `image` is the "name:version" its desktops are cloned from."""
    return PlacementRequest(
        pool=pool.name,
        memory_mib=pool.memory_mib,
        vcpus=pool.vcpus,
        image=image,
        zone=pool.zone,
        site=pool.site,
        required_labels=tuple(sorted(pool.required_labels.items())),
        max_per_host=pool.max_per_host,
        network_zone=pool.network_zone,
        sessions=pool.kind in SESSION_KINDS,
    )


def update_display(db: Session, desktop_id: int, endpoint: DisplayEndpoint) -> Desktop:
    desktop = db.get(Desktop, desktop_id)
    desktop.vnc_host, desktop.vnc_port = endpoint.host, endpoint.port
    return desktop


def mark_running(db: Session, desktop_id: int, endpoint: DisplayEndpoint) -> Desktop:
    desktop = update_display(db, desktop_id, endpoint)
    desktop.state = "running"
    return desktop


def mark_failed(db: Session, desktop_id: int, error: str, username: str, client_ip: str) -> None:
    desktop = db.get(Desktop, desktop_id)
    desktop.state = "error"
    desktop.error = error
    db.add(
        _audit(
            username,
            "connect",
            "error",
            desktop.pool_name,
            client_ip,
            desktop=desktop.domain_name,
            error=error,
        )
    )


def end_sessions(db: Session, desktop_id: int) -> int:
    sessions = db.scalars(
        select(DesktopSession).where(
            DesktopSession.desktop_id == desktop_id, DesktopSession.state == "active"
        )
    ).all()
    for session in sessions:
        session.state, session.ended_at = "ended", utcnow()
    return len(sessions)


def retire_desktop(db: Session, desktop_id: int) -> int:
    """Mark the desktop deleted and end its sessions; return how many sessions ended."""
    db.get(Desktop, desktop_id).state = "deleted"
    return end_sessions(db, desktop_id)


def record_logoff(
    db: Session, desktop: Desktop, username: str, client_ip: str, action: str = "logoff", **detail: Any
) -> int:
    ended = retire_desktop(db, desktop.id)
    db.add(
        _audit(
            username, action, "success", desktop.pool_name, client_ip, desktop=desktop.domain_name, **detail
        )
    )
    return ended


def record_dedicated_logoff(
    db: Session, desktop: Desktop, username: str, client_ip: str, action: str = "logoff", **detail: Any
) -> int:
    """End the sessions only: a dedicated desktop stays assigned and running, its disk intact."""
    ended = end_sessions(db, desktop.id)
    detail |= {"desktop": desktop.domain_name, "desktop_kept": True}
    db.add(_audit(username, action, "success", desktop.pool_name, client_ip, **detail))
    return ended


def load_session(db: Session, session_id: str) -> tuple[DesktopSession, Desktop]:
    session = db.get(DesktopSession, session_id)
    if session is None:
        raise errors.UnknownSession()
    return session, db.get(Desktop, session.desktop_id)


def open_session(
    db: Session, desktop_id: int, username: str, client_ip: str, device_sha256: str | None = None
) -> tuple[DesktopSession, bool]:
    """The user's active session on the desktop, or a new one; True when it was created.
    `device_sha256`: the fingerprint of the client's device certificate (a center terminal's), if any.

    A session lasts from connect to logoff, so connecting again (another tab, another
    terminal) continues it rather than starting a second one.
    """
    session = db.scalars(
        select(DesktopSession).where(
            DesktopSession.desktop_id == desktop_id,
            DesktopSession.username == username,
            DesktopSession.state == "active",
        )
    ).first()
    created = session is None
    desktop = db.get(Desktop, desktop_id)
    if desktop.state != "running":
        # The power manager of another broker powered it off between our check and now.
        raise errors.DesktopStarting()
    if created:
        session = DesktopSession(
            id=str(uuid.uuid4()),
            username=username,
            desktop_id=desktop_id,
            pool_name=desktop.pool_name,
            client_ip=client_ip,
            state="active",
            started_at=utcnow(),
            ended_at=None,
            last_input_at=None,
            center=None,
        )
        # At a center terminal the session records its center; the day's first is the check-in.
        record_arrival(db, session, client_ip, device_sha256)
        # A plain INSERT of the new row (no ORM instance to track and flush): the unique index on live
        # sessions (models.DesktopSession) refuses a second one of the user in this pool at once, and the
        # IntegrityError reaches DesktopService._open_session, which joins the first.
        db.execute(insert(_SESSIONS).values({key: vars(session)[key] for key in _SESSION_COLUMNS}))
        make_transient_to_detached(session)
    else:
        session.client_ip = client_ip
    detail = {"desktop": desktop.domain_name, "host": desktop.host_name, "session": session.id}
    # Connecting while a session is active (another tab, another terminal) continues it: a reconnect.
    action = "connect" if created else "reconnect"
    # A plain INSERT of the audit row too (no ORM instance to flush).
    columns = _audit_columns(
        username, action, "success", desktop.pool_name, client_ip, **detail, new_session=created
    )
    insert_audit_event(db, **columns)
    db.flush()
    return session, created


def join_live_session(
    db: Session, pool: str, username: str, ours: int, client_ip: str
) -> tuple[DesktopSession, Desktop] | None:
    """The user's live session in the pool that another broker (or request) opened first; None if it
    has already ended. Our desktop `ours`, if it is not that session's, goes back to the pool as a spare."""
    session = db.scalars(
        select(DesktopSession).where(
            DesktopSession.username == username,
            DesktopSession.pool_name == pool,
            DesktopSession.state == "active",
        )
    ).first()
    if session is None:
        return None
    if session.desktop_id != ours:
        db.execute(
            update(Desktop)
            .where(Desktop.id == ours, Desktop.assigned_user == username, Desktop.state == "running")
            .values(assigned_user=None)
        )
    desktop = db.get(Desktop, session.desktop_id)
    detail = {"desktop": desktop.domain_name, "session": session.id, "joined": True}
    db.add(_audit(username, "reconnect", "success", pool, client_ip, **detail, new_session=False))
    return session, desktop


def load_owned_session(db: Session, session_id: str, username: str) -> tuple[DesktopSession, Desktop]:
    # Another user's session answers exactly like a missing one, so ids cannot be probed.
    session = db.get(DesktopSession, session_id)
    if session is None or session.username != username:
        raise errors.UnknownSession()
    return session, db.get(Desktop, session.desktop_id)


TOKEN_RATE_WINDOW_S = 60

# A console token's one read: the session, its desktop and the desktop's host, as plain columns (it was
# three ORM look-ups); the host's columns keep their names, as console_route reads them from a Host.
_hosts, _desktops = Host.__table__, Desktop.__table__
_OWNED_SESSION = (
    select(
        _SESSIONS.c.username,
        _SESSIONS.c.state.label("session_state"),
        _SESSIONS.c.client_ip,
        _SESSIONS.c.desktop_id,
        _desktops.c.state.label("desktop_state"),
        _desktops.c.pool_name,
        _desktops.c.vnc_host,
        _desktops.c.vnc_port,
        _hosts.c.name,
        _hosts.c.uri,
        _hosts.c.console_access,
        _hosts.c.ssh_address,
    )
    .join(_desktops, _desktops.c.id == _SESSIONS.c.desktop_id)
    .outerjoin(_hosts, _hosts.c.name == _desktops.c.host_name)
    .where(_SESSIONS.c.id == bindparam("session_id"))
)


def tokens_minted_recently(db: Session, username: str, now: dt.datetime) -> int:
    """Console tokens minted for the user's sessions in the last minute (all brokers: it is the database)."""
    since = now - dt.timedelta(seconds=TOKEN_RATE_WINDOW_S)
    return db.scalar(
        select(func.count())
        .select_from(ConsoleToken)
        .join(DesktopSession, DesktopSession.id == ConsoleToken.session_id)
        .where(DesktopSession.username == username, ConsoleToken.created_at > since)
    )


def console_policy(pool: PoolSettings | None) -> ConsolePolicy:
    """The console policy a token carries to the gateway: the pool's clipboard and recording settings."""
    if pool is None:
        return ConsolePolicy()
    return ConsolePolicy(
        pool.clipboard,
        pool.clipboard_max_bytes,
        pool.clipboard_text_only,
        recording=pool.recording,
        zone=pool.network_zone,
        cross_zone_clipboard=pool.cross_zone_clipboard,
    )


def issue_for_owner(
    db: Session,
    session_id: str,
    username: str | PortalUser | SessionUser,
    ttl_s: int,
    per_minute: int,
    policy_of: Callable[[str], ConsolePolicy] | None = None,
    device_sha256: str | None = None,
) -> str:
    """A console token for the owner's session; `username` may be the request's SessionUser, whose user
    is read here first (NotAuthenticated before anything else when its portal session is not live)."""
    if not isinstance(username, str):
        username = user_of(db, username).username
    owned = db.execute(_OWNED_SESSION, {"session_id": session_id}).one_or_none()
    # Another user's session answers exactly like a missing one, so ids cannot be probed.
    if owned is None or owned.username != username:
        raise errors.UnknownSession()
    if tokens_minted_recently(db, username, utcnow()) >= per_minute:
        raise errors.ConsoleTokenRate()
    if owned.session_state != "active":
        raise errors.SessionEnded()
    if owned.desktop_state != "running" or owned.vnc_port is None:
        raise errors.DesktopNotRunning()
    host = owned if owned.name is not None else None  # the host's columns, as console_route reads them
    route, ssh_address = console_route(host, owned.vnc_host)
    policy = policy_of(owned.pool_name) if policy_of else None
    arrival = arrival_at(db, owned.client_ip, device_sha256) if policy is not None else None
    if arrival is not None:
        # At a center terminal the console knows the terminal's network zone (gateway/clipboard.py).
        policy = dataclasses.replace(policy, client_zone=arrival.zone)
    return issue_token(
        db,
        session_id=session_id,
        desktop_id=owned.desktop_id,
        host=owned.vnc_host,
        port=owned.vnc_port,
        ttl_s=ttl_s,
        route=route,
        ssh_address=ssh_address,
        policy=policy,
    )


def session_view(db: Session, session_id: str, username: str) -> SessionView:
    session, desktop = load_owned_session(db, session_id, username)
    return SessionView(
        session.id, session.state, DesktopView.of(desktop), session.started_at, session.ended_at
    )


def users_desktops(db: Session, username: str) -> dict[str, tuple[Desktop, str | None]]:
    """The user's current desktop per pool, with its active session id if any."""
    rows = db.execute(
        select(Desktop, DesktopSession.id)
        .outerjoin(
            DesktopSession,
            (DesktopSession.desktop_id == Desktop.id) & (DesktopSession.state == "active"),
        )
        # "lost" too (host monitor, broker/monitor.py): the portal tells the user until they connect again.
        .where(Desktop.assigned_user == username, Desktop.state.in_((*HOLDING_STATES, "lost")))
        .order_by(Desktop.id)
    ).all()
    return {desktop.pool_name: (desktop, session_id) for desktop, session_id in rows}


def count_active_sessions(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(DesktopSession).where(DesktopSession.state == "active"))


def _signed_in(who: PortalUser | SessionUser) -> str:
    """The user's name once `who` was read; a SessionUser's is bound to this request's log lines from here
    on, as BaseHandler.prepare binds a user it read itself."""
    if isinstance(who, PortalUser):
        return who.username
    assert who.user is not None
    logs.bind(user=who.user.username)
    return who.user.username


# -- the service ----------------------------------------------------------------------------------


class DesktopService:
    """What the handlers ask about desktops: list, connect, console token, session, logoff."""

    def __init__(
        self,
        config: BrokerConfig,
        db: Database,
        providers: dict[str, DesktopProvider],
        placement: PlacementEngine | None = None,
        image_resolver: ImageResolver | None = None,
    ) -> None:
        self.config = config
        self.db = db
        # The desktop provider of each host placement may choose; the hosts API adds and removes entries.
        self.providers = providers
        self.placement = placement or PlacementEngine.default()
        # Decides and claims on one thread, from candidates it keeps (re-read when stale or lost).
        self.placer = PlacementWorker(
            db,
            self.placement,
            config.placement.claim_attempts,
            host_names=lambda: list(self.providers),
            max_age_s=config.placement.catalog_max_age_s,
        )
        self.image_resolver = image_resolver or PoolImages(db, partial(boot_image_for, config.images))
        self._executor = ThreadPoolExecutor(max_workers=PROVIDER_THREADS, thread_name_prefix="hypervisor")
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Called when a pool lost a desktop (a spare taken, a floating desktop destroyed); the pool
        # manager sets it to wake its reconcile pass early.
        self.pool_changed: Callable[[], None] = lambda: None
        key = config.broker.vnc_password_key
        self.vnc_passwords = VncPasswordBox(key.get_secret_value()) if key else None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.placer.close(wait=False)

    # -- listing ---------------------------------------------------------------------------------

    def pool(self, name: str) -> PoolSettings:
        pool = self.config.pool(name)
        if pool is None:
            raise errors.UnknownPool(f"There is no desktop pool named {name}.", pool=name)
        return pool

    async def pools_for(self, who: PortalUser | SessionUser) -> list[PoolView]:
        """The pools the user is entitled to, with their desktops; a SessionUser's user is read in the same
        transaction as the desktops."""

        def read(db: Session) -> tuple[list[PoolSettings], dict]:
            user = user_of(db, who)
            pools = entitled_pools(self.config.pools, user.groups)
            return pools, users_desktops(db, user.username) if pools else {}

        if isinstance(who, SessionUser) or entitled_pools(self.config.pools, who.groups):
            pools, current = await self.db.run(read)
        else:
            pools, current = [], {}
        views = []
        for pool in pools:
            desktop, session_id = current.get(pool.name, (None, None))
            views.append(
                PoolView(pool.name, pool.display_name, desktop and DesktopView.of(desktop), session_id)
            )
        return views

    async def explain_placement(self, pool_name: str) -> dict:
        """Where placement would put a new desktop of the pool now, and why (each filter's kept and dropped
        hosts, the best weighed), over the hosts this broker has a provider for."""
        pool = self.pool(pool_name)
        request = placement_request(pool, await self._explained_image(pool))
        hosts = await self.db.run(partial(load_candidates, host_names=sorted(self.providers)))
        decision = self.placement.explain(hosts, request)
        return {"pool": pool.name, "hosts": len(hosts), **decision.as_json()}

    async def _explained_image(self, pool: PoolSettings) -> str:
        try:
            image = await self._blocking(self.image_resolver, pool)
        except errors.BrokerError:
            return ""  # no image built yet: explain placement without the image weigher's preference
        return f"{image.name}:{image.version}"

    async def session(self, user: PortalUser, session_id: str) -> SessionView:
        return await self.db.run(partial(session_view, session_id=session_id, username=user.username))

    # -- connect ---------------------------------------------------------------------------------

    async def connect(
        self, user: PortalUser, pool_name: str, client_ip: str, device_sha256: str | None = None
    ) -> SessionView:
        """The user's session on a running desktop of the pool, starting one when needed; `device_sha256`:
        the client's device certificate's fingerprint (a center terminal known by it, docs/centers.md)."""
        started = time.monotonic()
        try:
            pool = self.pool(pool_name)
            await self._check_entitled(user, pool, client_ip)
            # One connect at a time per user and pool in this process: a double click waits for the first
            # instead of starting a second desktop. Only an optimisation: across brokers the unique index
            # on live sessions decides (open_session, join_live_session).
            async with self._lock(user.username, pool.name):
                view = await self._connect(user, pool, client_ip, device_sha256)
        except errors.BrokerError as exc:
            self._observe_connect(connect_result(exc), started)
            raise
        self._observe_connect(ConnectResult.SUCCESS, started)
        return view

    def _observe_connect(self, result: ConnectResult | None, started: float) -> None:
        if result is not None:
            CONNECT_DURATION.labels(result=result.value).observe(time.monotonic() - started)

    def _lock(self, username: str, pool: str) -> asyncio.Lock:
        lock = self._locks.get((username, pool))
        if lock is None:
            lock = self._locks[(username, pool)] = asyncio.Lock()
        return lock

    async def _check_entitled(self, user: PortalUser, pool: PoolSettings, client_ip: str) -> None:
        try:
            check_entitled(pool, user.groups)
        except errors.NotEntitled as exc:
            log.warning(
                "connect denied: user=%s pool=%s: not entitled (groups %s)",
                user.username,
                pool.name,
                user.groups,
            )
            event = _audit(user.username, "connect", "denied", pool.name, client_ip, reason=exc.reason)
            await self.db.run(lambda db: db.add(event))
            raise

    async def _connect(
        self, user: PortalUser, pool: PoolSettings, client_ip: str, device_sha256: str | None
    ) -> SessionView:
        # Most connects of a morning find no desktop of the user's and take a spare: both in one transaction.
        found, spare = await self.db.run(partial(current_or_spare, pool=pool, username=user.username))
        if spare:
            desktop = await self._check_spare(user, pool, found)
        else:
            desktop = await self._reusable_desktop(user, pool, found) if found is not None else None
            if desktop is None and found is not None:
                desktop = await self._spare_desktop(user, pool)
        if desktop is None:
            desktop = await self._start_desktop(user, pool, client_ip)
        session, desktop, created = await self._open_session(user, pool, desktop, client_ip, device_sha256)
        if created:
            SESSIONS_ACTIVE.inc()
        log.info(
            "connect: user=%s pool=%s desktop=%s host=%s session=%s",
            *(user.username, pool.name, desktop.domain_name, desktop.host_name, session.id),
        )
        return SessionView(session.id, session.state, DesktopView.of(desktop), session.started_at)

    async def _open_session(
        self,
        user: PortalUser,
        pool: PoolSettings,
        desktop: Desktop,
        client_ip: str,
        device_sha256: str | None,
    ) -> tuple[DesktopSession, Desktop, bool]:
        """Our new session on `desktop`, or the one another broker opened first for the user and pool."""
        opened = partial(
            open_session,
            desktop_id=desktop.id,
            username=user.username,
            client_ip=client_ip,
            device_sha256=device_sha256,
        )
        try:
            session, created = await self.db.run(opened)
            return session, desktop, created
        except IntegrityError:
            pass  # the unique index on live sessions: another Connect of the user won
        join = partial(
            join_live_session, pool=pool.name, username=user.username, ours=desktop.id, client_ip=client_ip
        )
        joined = await self.db.run(join)
        if joined is None:  # the winner's session ended meanwhile: ours may now be opened
            session, created = await self.db.run(opened)
            return session, desktop, created
        CONNECTS_JOINED.inc()
        log.info(
            "connect: user=%s pool=%s joins session %s opened meanwhile on desktop %s",
            *(user.username, pool.name, joined[0].id, joined[1].domain_name),
        )
        if joined[1].id != desktop.id:
            self.pool_changed()  # our desktop went back to the pool as a spare
        return joined[0], joined[1], False

    async def _reusable_desktop(
        self, user: PortalUser, pool: PoolSettings, desktop: Desktop
    ) -> Desktop | None:
        """The user's desktop in the pool if it is really running; anything else is cleaned up."""
        if desktop.state == "provisioning":
            if (utcnow() - desktop.created_at).total_seconds() < STALE_PROVISIONING_S:
                raise errors.DesktopStarting()
            actual = "stale provisioning"
        else:
            # The database says running (or powered off); the hypervisor is the truth (principle 1).
            actual = await self.desktop_state(desktop)
            if actual == "running":
                if desktop.state != "running":  # a power action a dead broker left half-way
                    desktop = await self.db.run(partial(set_state, desktop_id=desktop.id, state="running"))
                return await self._refresh_display(desktop)
            if actual in ("paused", "suspended", "shutoff") and self._kept_off(pool, desktop):
                return await self._power_on(desktop, actual, user.username)
        log.info("desktop %s on host %s is %s; replacing it", desktop.domain_name, desktop.host_name, actual)
        await self._retire(desktop)
        return None

    @staticmethod
    def _kept_off(pool: PoolSettings, desktop: Desktop) -> bool:
        """Whether a desktop that is not running should be started again rather than replaced:
        one its power policy turned off, or any dedicated desktop (its disk holds the user's work)."""
        return desktop.state in (*OFF_STATES, *TRANSIT_STATES) or pool.kind == "dedicated"

    async def _power_on(self, desktop: Desktop, actual: str, actor: str) -> Desktop:
        """Start or resume the user's kept desktop from its own disk; the portal shows it "starting"."""
        action = PowerAction.START if actual == "shutoff" else PowerAction.RESUME
        off_state = "stopped" if actual == "shutoff" else "suspended"
        await self.db.run(partial(set_state, desktop_id=desktop.id, state="starting"))
        started = time.monotonic()
        try:
            endpoint = await self._on_host(
                desktop.host_name, lambda provider: provider.start_desktop(desktop.domain_name)
            )
        except errors.BrokerError as exc:
            observe_power_action(action, False, time.monotonic() - started)
            await self._record_power(
                desktop.id,
                off_state,
                action,
                actor,
                error=exc.message,
                duration_s=round(time.monotonic() - started, 3),
            )
            raise
        elapsed = time.monotonic() - started
        observe_power_action(action, True, elapsed)
        log.info(
            "power: %s desktop %s on host %s for %s (%.1f s)",
            *(action.value, desktop.domain_name, desktop.host_name, actor, elapsed),
        )
        return await self._record_power(
            desktop.id, "running", action, actor, endpoint=endpoint, duration_s=round(elapsed, 3)
        )

    async def _record_power(
        self, desktop_id: int, state: str, action: PowerAction, actor: str, **detail: Any
    ) -> Desktop:
        return await self.db.run(
            partial(
                record_power_action, desktop_id=desktop_id, state=state, action=action, actor=actor, **detail
            )
        )

    async def power_off(self, pool: PoolSettings, desktop: UnusedDesktop, how: PowerOff) -> bool:
        """Apply the pool's power policy to a desktop nobody is logged on to; False if it was not done.

        Under the user's connect lock, so a connect of this broker waits and then starts it again.
        """
        async with self._lock(desktop.user, pool.name):
            if not await self.db.run(partial(begin_power_off, desktop_id=desktop.id, transit=how.transit)):
                return False  # its user connected meanwhile
            started = time.monotonic()
            try:
                await self._on_host(
                    desktop.host_name,
                    lambda provider: how.apply(provider, desktop.domain_name, pool.shutdown_timeout_s),
                )
            except errors.BrokerError as exc:
                observe_power_action(how.action, False, time.monotonic() - started)
                log.warning(
                    "power: cannot %s desktop %s: %s", how.action.value, desktop.domain_name, exc.message
                )
                # Still running as far as anyone knows; the next pass tries again.
                await self._record_power(desktop.id, "running", how.action, POWER_ACTOR, error=exc.message)
                return False
            elapsed = time.monotonic() - started
            observe_power_action(how.action, True, elapsed)
            await self._record_power(
                desktop.id, how.final, how.action, POWER_ACTOR, duration_s=round(elapsed, 3)
            )
        log.info(
            "power: %s desktop %s of %s on host %s (%.1f s)",
            *(how.action.value, desktop.domain_name, desktop.user, desktop.host_name, elapsed),
        )
        return True

    async def _spare_desktop(self, user: PortalUser, pool: PoolSettings) -> Desktop | None:
        """Fast path: take a prewarmed spare of the pool, if its host confirms it is running."""
        desktop = await self.db.run(partial(take_spare, pool=pool, username=user.username))
        return None if desktop is None else await self._check_spare(user, pool, desktop)

    async def _check_spare(self, user: PortalUser, pool: PoolSettings, desktop: Desktop) -> Desktop | None:
        """A spare just assigned to the user, if its host confirms it is running; else it is replaced."""
        self.pool_changed()
        actual = await self.desktop_state(desktop)
        if actual == "running":
            log.info(
                "connect: user=%s takes spare %s of pool %s", user.username, desktop.domain_name, pool.name
            )
            return await self._refresh_display(desktop)
        log.info("spare %s on host %s is %s; replacing it", desktop.domain_name, desktop.host_name, actual)
        await self._retire(desktop)
        return None

    async def _refresh_display(self, desktop: Desktop) -> Desktop:
        # A desktop restarted behind our back (host reboot) gets a new VNC port from autoport.
        endpoint = await self._on_host(
            desktop.host_name, lambda provider: provider.display(desktop.domain_name)
        )
        if (endpoint.host, endpoint.port) == (desktop.vnc_host, desktop.vnc_port):
            return desktop
        return await self.db.run(partial(update_display, desktop_id=desktop.id, endpoint=endpoint))

    async def _retire(self, desktop: Desktop) -> None:
        await self.destroy(desktop)
        ended = await self.db.run(partial(retire_desktop, desktop_id=desktop.id))
        SESSIONS_ACTIVE.dec(ended)

    async def _start_desktop(self, user: PortalUser, pool: PoolSettings, client_ip: str) -> Desktop:
        return await self._boot(pool, user.username, user.username, client_ip)

    async def start_spare(self, pool: PoolSettings, guard: PlacementGuard | None = None) -> Desktop:
        """Place and boot an unassigned desktop for the pool (the pool manager's refill).

        `guard(db)` runs in the claim's transaction before the desktop is recorded; raising there (the pool
        already has its spares, broker/pools.py) records nothing.
        """
        return await self._boot(pool, None, SPARE_ACTOR, "", guard=guard)

    async def start_for(self, pool: PoolSettings, owner: str, actor: str, client_ip: str = "") -> Desktop:
        """Place and boot a desktop assigned to `owner` (an administrator moving it to a new version)."""
        return await self._boot(pool, owner, actor, client_ip)

    async def start_canary(self, pool: PoolSettings, image: BootImage, rollout_id: int) -> Desktop:
        """Place and boot an unassigned desktop of `image` named as the rollout's canary."""
        return await self._boot(pool, None, SPARE_ACTOR, "", image=image, name=canary_owner(rollout_id))

    async def pool_image(self, pool: PoolSettings) -> BootImage:
        """The image new desktops of the pool start from: a promoted rollout's version, else the resolver's."""
        if isinstance(self.image_resolver, PoolImages):
            # The broker's own resolver asks for a promoted rollout first itself (catalog_version), in the
            # one transaction: no transaction of its own for that here (one per desktop made).
            return await self._blocking(self.image_resolver, pool)
        promoted = await self.db.run(partial(promoted_rollout, pool=pool))
        if promoted is None:
            return await self._blocking(self.image_resolver, pool)
        return await self.version_image(pool, promoted.image_name, promoted.version)

    async def version_image(self, pool: PoolSettings, name: str, version: str) -> BootImage:
        """A catalog version's BootImage, its file re-hashed (ImageUnavailable naming it otherwise)."""
        row = await self.db.run(partial(catalog_row, pool=pool, name=name, version=version))
        return await self._blocking(version_boot_image, row)

    async def _boot(
        self,
        pool: PoolSettings,
        owner: str | None,
        actor: str,
        client_ip: str,
        image: BootImage | None = None,
        name: str | None = None,
        guard: PlacementGuard | None = None,
    ) -> Desktop:
        """Place, create and start a desktop for `owner` (None: a spare); `actor` is who asked.

        `image` defaults to the pool's current version; `name` replaces the owner in the domain name.
        """
        if image is None and pool.kind not in SESSION_KINDS:
            image = await self.pool_image(pool)
        desktop = await self._place(owner, pool, image, name, guard)
        # The guest's VGA text console has no Hangul glyphs, so its label uses the ASCII names.
        label = f"{pool.name} / {owner or name or 'spare'}"
        spec = desktop_spec(pool, desktop.domain_name, image, owner, label, self._vnc_password(desktop))
        try:
            endpoint = await self._on_host(desktop.host_name, lambda provider: provider.create_desktop(spec))
        except Exception as exc:
            await self._start_failed(desktop, exc, actor, client_ip)
            raise
        DESKTOPS_STARTED.inc()
        log.info(
            "desktop %s started on host %s, display %s:%d",
            *(desktop.domain_name, desktop.host_name, endpoint.host, endpoint.port),
        )
        return await self.db.run(partial(mark_running, desktop_id=desktop.id, endpoint=endpoint))

    async def _start_failed(self, desktop: Desktop, exc: Exception, actor: str, client_ip: str) -> None:
        DESKTOP_START_FAILURES.inc()
        # Only messages known to be safe are kept; an unexpected exception is recorded by type.
        error = exc.message if isinstance(exc, errors.BrokerError) else type(exc).__name__
        log.warning(
            "desktop %s failed to start on host %s: %s", desktop.domain_name, desktop.host_name, error
        )
        await self.db.run(
            partial(mark_failed, desktop_id=desktop.id, error=error, username=actor, client_ip=client_ip)
        )

    async def _place(
        self,
        owner: str | None,
        pool: PoolSettings,
        image: BootImage | None,
        name: str | None = None,
        guard: PlacementGuard | None = None,
    ) -> Desktop:
        """Choose a host and claim a slot on it, on the placement thread (broker/placement/worker.py).

        A claim lost to another broker or to a host that changed places again, up to
        `[placement] claim_attempts` times.
        """
        request = placement_request(pool, image_of(image))
        make_desktop = partial(self._new_desktop, owner, pool, image, name)
        try:
            placed = await self.placer.place_async(request, make_desktop, guard)
        except NoHostFits as refused:
            reason = refused.decision.reason
            raise errors.NoCapacity(reason, detail=reason, pool=pool.name) from None
        except ClaimsKeptFailing:
            raise errors.PlacementConflict() from None
        return placed.desktop

    def _new_desktop(
        self, owner: str | None, pool: PoolSettings, image: BootImage | None, name: str | None = None
    ) -> Desktop:
        domain_name = domain_name_for(pool.name, name or owner or "spare")
        return Desktop(
            pool_name=pool.name,
            domain_name=domain_name,
            image=image_of(image),
            state="provisioning",
            assigned_user=owner,
            created_at=utcnow(),
            vnc_password_sealed=self._sealed_vnc_password(domain_name),
        )

    def _sealed_vnc_password(self, domain_name: str) -> str | None:
        """A new random VNC password for the desktop, sealed for its row (None without a key)."""
        if self.vnc_passwords is None:
            return None
        return self.vnc_passwords.seal(domain_name, new_vnc_password())

    def _vnc_password(self, desktop: Desktop) -> str | None:
        if self.vnc_passwords is None or desktop.vnc_password_sealed is None:
            return None
        return self.vnc_passwords.open(desktop.domain_name, desktop.vnc_password_sealed)

    # -- console token and logoff ----------------------------------------------------------------

    async def console_token(
        self, who: PortalUser | SessionUser, session_id: str, device_sha256: str | None = None
    ) -> ConsoleGrant:
        """`device_sha256`: the client's device certificate's fingerprint (a center terminal's), if any.
        A SessionUser's user is read in the token's own transaction."""
        ttl_s = self.config.broker.console_token_ttl_s
        issue = partial(
            issue_for_owner,
            session_id=session_id,
            username=who,
            ttl_s=ttl_s,
            per_minute=self.config.broker.console_tokens_per_minute,
            policy_of=lambda pool_name: console_policy(self.config.pool(pool_name)),
            device_sha256=device_sha256,
        )
        try:
            token = await self.db.run(issue)
        except errors.ConsoleTokenRate:
            CONSOLE_TOKENS_REFUSED.labels(reason=TokenRefusal.RATE.value).inc()
            log.warning(
                "console token refused: user=%s over %d per minute",
                _signed_in(who),
                issue.keywords["per_minute"],
            )
            raise
        CONSOLE_TOKENS_ISSUED.inc()
        username = _signed_in(who)
        log.info("console token issued: user=%s session=%s ttl=%ss", username, session_id, ttl_s)
        return ConsoleGrant(token, self.config.broker.gateway_url, ttl_s)

    async def logoff(self, user: PortalUser, session_id: str, client_ip: str) -> SessionView:
        """End the session; a floating pool's desktop is destroyed with it, a dedicated one is kept.

        Logging off twice is harmless.
        """
        session, desktop = await self.db.run(
            partial(load_owned_session, session_id=session_id, username=user.username)
        )
        if session.state == "active":
            await self._end_session(desktop, user.username, client_ip, "logoff")
            log.info("logoff: user=%s desktop=%s session=%s", user.username, desktop.domain_name, session_id)
        return await self.session(user, session_id)

    async def end_session(self, session_id: str, actor: str, action: str, client_ip: str = "") -> SessionView:
        """Log a session off on someone else's behalf: an administrator, or the pool's session policy.

        `action` is what the audit records (force_logoff, idle_logoff, max_time_logoff).
        """
        session, desktop = await self.db.run(partial(load_session, session_id=session_id))
        if session.state == "active":
            await self._end_session(desktop, actor, client_ip, action, user=session.username)
            log.info(
                "%s: by=%s user=%s desktop=%s session=%s",
                *(action, actor, session.username, desktop.domain_name, session_id),
            )
        session, desktop = await self.db.run(partial(load_session, session_id=session_id))
        return SessionView(
            session.id, session.state, DesktopView.of(desktop), session.started_at, session.ended_at
        )

    async def _end_session(
        self, desktop: Desktop, actor: str, client_ip: str, action: str, **detail: Any
    ) -> None:
        record = await self._logoff_desktop(desktop)
        ended = await self.db.run(
            partial(record, desktop=desktop, username=actor, client_ip=client_ip, action=action, **detail)
        )
        SESSIONS_ACTIVE.dec(ended)
        self.pool_changed()

    async def _logoff_desktop(self, desktop: Desktop) -> Callable[..., int]:
        """Apply the pool's kind to the desktop at logoff; returns the database step that records it."""
        pool = self.config.pool(desktop.pool_name)
        moved = pool is not None and await self.db.run(partial(outdated, pool=pool, desktop=desktop))
        if pool is not None and pool.kind == "dedicated" and not moved:
            # The user comes back to this desktop: same domain, same overlay, so their writes survive.
            return record_dedicated_logoff
        await self.destroy(desktop)
        # A rollout promoted another version: the next connect starts the user a desktop of it.
        return partial(record_logoff, outdated_image=desktop.image) if moved else record_logoff

    async def retire(self, desktop: Desktop) -> None:
        """Destroy the desktop on its host and mark it deleted, ending any session on it."""
        await self._retire(desktop)

    # -- blocking calls --------------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def desktop_state(self, desktop: Desktop) -> str:
        """What the desktop's host says it is: "running", "paused", "suspended", "shutoff" or "missing"."""
        return await self._on_host(
            desktop.host_name, lambda provider: provider.desktop_state(desktop.domain_name)
        )

    async def destroy(self, desktop: Desktop) -> None:
        """Remove the desktop from its host (idempotent); the database is the caller's to update."""
        await self._on_host(desktop.host_name, lambda provider: provider.destroy_desktop(desktop.domain_name))

    async def readiness(self, desktop: Desktop) -> Readiness:
        """Whether the running desktop finished starting, as its host's provider can tell."""
        return await self._on_host(
            desktop.host_name, lambda provider: provider.readiness(desktop.domain_name)
        )

    async def _on_host(self, host: str | None, call: Callable[[DesktopProvider], T]) -> T:
        """Run `call` with the host's provider on the executor; hypervisor errors become 503s naming the host."""
        provider = self.providers.get(host or "")
        if provider is None:
            detail = f"host {host}: no desktop provider is configured for it"
            raise errors.HostUnreachable(f"{detail}.", detail=detail, host=str(host))
        try:
            return await self._blocking(call, provider)
        except HypervisorError as exc:
            raise broker_error_for(exc) from None


# -- housekeeping ---------------------------------------------------------------------------------


def remove_all_desktops(config: BrokerConfig) -> int:
    """Destroy every desktop the database knows of and end its sessions (used when a demo stops).

    Blocking; for command-line use, never on the event loop.
    """
    db = Database(config.database)
    providers: dict[str, DesktopProvider] = {}
    try:
        with db.transaction() as session:
            providers = providers_for(host_settings(session, configured=config.hosts))
            live = session.scalars(select(Desktop).where(Desktop.state != "deleted")).all()
        removed = 0
        for desktop in live:
            try:
                if desktop.host_name in providers:
                    providers[desktop.host_name].destroy_desktop(desktop.domain_name)
            except HypervisorError as exc:
                log.warning("could not remove desktop %s: %s", desktop.domain_name, exc)
                continue  # the others still go; this one stays recorded for the next try
            with db.transaction() as session:
                retire_desktop(session, desktop.id)
            removed += 1
        return removed
    finally:
        for provider in providers.values():
            provider.close()
        db.close()
