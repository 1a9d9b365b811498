"""Database side of lockout, the TOTP second factor and pending logins (policy lives in sso/).

Every function here runs in Database.run's worker thread, inside one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from broker import errors
from broker.centers import network_holding
from broker.db.models import AuditEvent, Center, LoginThrottle, PendingLogin, TotpCredential, User
from sso import lockout
from sso.base import Identity
from sso.config import LockoutSettings
from sso.totp import SecretBox, TotpError, verify

# -- errors the login flow answers with ---------------------------------------------------------------


class AccountLocked(errors.InvalidCredentials):
    """A locked user name: the very answer a wrong password gets, so a lock reveals nothing."""


class SourceLocked(errors.LoginRefused):
    """Too many failures from one address, or (a center address) too many logins in flight at once: 429
    with Retry-After (RFC 6585 section 4)."""

    status = 429
    reason = "too_many_attempts"
    message = "Too many sign-in attempts from this address. Please try again later."

    def __init__(self, retry_after_s: int) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s


class TotpRequired(errors.LoginRefused):
    """The first step (any login method) was right; the login waits for a TOTP code on POST /api/v1/login/totp."""

    reason = "totp_required"
    message = "Enter the code from your authenticator app."

    def __init__(self, pending: str) -> None:
        super().__init__()
        self.pending = pending

    def as_json(self) -> dict:
        body = super().as_json()
        body["error"]["pending"] = self.pending
        return body


class TotpEnrolmentRequired(errors.LoginRefused):
    status = 403
    reason = "totp_enrolment_required"
    message = (
        "Sign-in from outside a smart work center needs a second factor. "
        "Enrol an authenticator app at a smart work center first."
    )


class InvalidTotp(errors.LoginRefused):
    reason = "invalid_totp"
    message = "The code is not valid. Enter the current code from your authenticator app."


class PendingLoginExpired(errors.LoginRefused):
    reason = "login_expired"
    message = "The sign-in took too long. Please start again."


class UnknownUser(errors.NotFound):
    reason = "unknown_user"

    def __init__(self, username: str) -> None:
        super().__init__(
            f"There is no user {username!r} known to the broker.", field="username", username=username
        )


class TotpNotEnrolled(errors.NotFound):
    reason = "totp_not_enrolled"

    def __init__(self, username: str) -> None:
        super().__init__(
            f"User {username!r} has no second factor enrolled.", field="username", username=username
        )


# -- lockout counters -----------------------------------------------------------------------------


_THROTTLES = LoginThrottle.__table__


@dataclass
class _Counter:
    """A lockout counter row as read under its lock (sso.lockout's Counter), written back by `_save` when
    sso.lockout changed it: plain Core statements, not ORM instances (every login pays this, docs/ha.md)."""

    kind: str
    key: str
    failures: int
    window_started_at: dt.datetime
    locked_until: dt.datetime | None
    read: tuple = ()

    def values(self) -> tuple:
        return (self.failures, self.window_started_at, self.locked_until)


def _counter(db: Session, kind: str, key: str, now: dt.datetime) -> _Counter:
    """The counter row, created if missing, locked for this transaction: one statement.

    INSERT … ON CONFLICT DO UPDATE … RETURNING creates the row or, when it is there (another broker may
    have made it a moment ago), updates it to what it is, which takes PostgreSQL's row lock, and hands it
    back either way; on SQLite the insert takes the write lock. The read-modify-write that follows (`_save`
    in the same transaction) loses no count. (It was INSERT … DO NOTHING, then SELECT … FOR UPDATE: two
    round trips a counter.)
    """
    insert = sqlite_insert if db.get_bind().dialect.name == "sqlite" else postgresql_insert
    statement = insert(_THROTTLES).values(kind=kind, key=key, failures=0, window_started_at=now)
    statement = statement.on_conflict_do_update(
        index_elements=[_THROTTLES.c.kind, _THROTTLES.c.key],
        set_={"failures": _THROTTLES.c.failures},
    ).returning(_THROTTLES.c.failures, _THROTTLES.c.window_started_at, _THROTTLES.c.locked_until)
    failures, window_started_at, locked_until = db.execute(statement).one()
    counter = _Counter(kind, key, failures, window_started_at, locked_until)
    counter.read = counter.values()
    return counter


def _save(db: Session, *counters: _Counter | None) -> None:
    """Write back what sso.lockout changed in these counters (one UPDATE each that changed)."""
    for counter in counters:
        if counter is None or counter.values() == counter.read:
            continue
        db.execute(
            update(_THROTTLES)
            .where(_THROTTLES.c.kind == counter.kind, _THROTTLES.c.key == counter.key)
            .values(
                failures=counter.failures,
                window_started_at=counter.window_started_at,
                locked_until=counter.locked_until,
            )
        )
        counter.read = counter.values()


def _counters(db: Session, user_key: str, client_ip: str, now: dt.datetime) -> list[tuple[str, _Counter]]:
    return [
        (kind, _counter(db, kind, key, now))
        for kind, key in ((lockout.USER, user_key), (lockout.SOURCE, client_ip))
        if key
    ]


@dataclass(frozen=True)
class Reservation:
    """The answer of reserve_attempt: the places an attempt took, or the seconds it has to wait.

    `at_center`: the address is on a registered center terminal network, so the attempt's address place is
    in the in-flight cap, not in the failure window; release and settle give back that one, whatever an
    administrator changed in between.
    """

    user_key: str
    client_ip: str
    at_center: bool = False
    user_wait: int = 0
    source_wait: int = 0
    busy: bool = False  # refused by the in-flight cap of a center address, not by a lock

    @property
    def refused(self) -> bool:
        return bool(self.user_wait or self.source_wait)

    @property
    def source_kind(self) -> str:
        """The counter holding the attempt's place on its address."""
        return lockout.IN_FLIGHT if self.at_center else lockout.SOURCE


def at_center(db: Session, client_ip: str) -> bool:
    """Whether the address is on a terminal network of a registered center (the centers table, as the
    portal's arrival_at reads it: every broker sees an administrator's change with its next login)."""
    if not client_ip:
        return False
    networks = [network for row in db.scalars(select(Center.networks)) for network in row or []]
    return network_holding(client_ip, networks) is not None


def reserve_attempt(
    db: Session, settings: LockoutSettings, user_key: str, client_ip: str, now: dt.datetime
) -> Reservation:
    """Reserve one attempt on the user name and on the address, both or neither (one transaction, rows
    locked). The answer says how long each one still has to wait; no wait means the attempt may go ahead."""
    if at_center(db, client_ip):
        return _reserve_at_center(db, settings, user_key, client_ip, now)
    counters = _counters(db, user_key, client_ip, now)
    waits = {kind: lockout.seconds_locked(counter, now) for kind, counter in counters}
    if not any(waits.values()):
        for kind, counter in counters:
            waits[kind] = lockout.reserve_attempt(counter, kind, settings, now)
        if any(waits.values()):
            # One side was full: the other side's place is given back, as the attempt does not happen.
            for kind, counter in counters:
                if not waits[kind]:
                    lockout.release_attempt(counter)
        _save(db, *(counter for _, counter in counters))
    return Reservation(user_key, client_ip, False, waits.get(lockout.USER, 0), waits.get(lockout.SOURCE, 0))


def _reserve_at_center(
    db: Session, settings: LockoutSettings, user_key: str, client_ip: str, now: dt.datetime
) -> Reservation:
    """A center address: the user name's place as anywhere, and a place in the address's in-flight cap;
    the address's failure window is only read (is it locked?), so logins still being checked never fill it.
    Rows are locked in the order user, source, in flight, as everywhere here: no waiting in a circle."""
    user = _counter(db, lockout.USER, user_key, now) if user_key else None
    source = db.execute(
        select(_THROTTLES.c.locked_until).where(
            _THROTTLES.c.kind == lockout.SOURCE, _THROTTLES.c.key == client_ip
        )
    ).one_or_none()
    user_wait, source_wait = lockout.seconds_locked(user, now), lockout.seconds_locked(source, now)
    if user_wait or source_wait:
        return Reservation(user_key, client_ip, True, user_wait, source_wait)
    if user is not None:
        user_wait = lockout.reserve_attempt(user, lockout.USER, settings, now)
        if user_wait:
            _save(db, user)
            return Reservation(user_key, client_ip, True, user_wait)
    in_flight = _counter(db, lockout.IN_FLIGHT, client_ip, now)
    source_wait = lockout.reserve_in_flight(in_flight, settings, now)
    if source_wait and user is not None:
        lockout.release_attempt(user)  # the attempt does not happen
    _save(db, user, in_flight)
    return Reservation(user_key, client_ip, True, 0, source_wait, busy=bool(source_wait))


def release_attempt(db: Session, reservation: Reservation) -> None:
    """Give the reserved attempt back on both counters: one conditional UPDATE each, no read (the user's
    row first, as reserve_attempt locks them, so two transactions never wait for each other in a circle)."""
    if reservation.user_key:
        _give_back(db, lockout.USER, reservation.user_key)
    if reservation.client_ip:
        _give_back(db, reservation.source_kind, reservation.client_ip)


def _give_back(db: Session, kind: str, key: str) -> None:
    failures = LoginThrottle.failures
    db.execute(
        update(LoginThrottle)
        .where(LoginThrottle.kind == kind, LoginThrottle.key == key)
        .values(failures=case((failures > 0, failures - 1), else_=0))
        .execution_options(synchronize_session=False)
    )


def finish_success(db: Session, user_key: str, reserved: Reservation | None) -> None:
    """A login succeeded: its user name starts afresh (the counter goes), and the address gets back the
    attempt it reserved when `reserved` is given (a password, or a TOTP code)."""
    reset_user(db, user_key)
    if reserved is not None and reserved.client_ip:
        _give_back(db, reserved.source_kind, reserved.client_ip)


def settle_failure(
    db: Session, settings: LockoutSettings, reservation: Reservation, now: dt.datetime
) -> list[str]:
    """The reserved attempt failed: lock what it used up; return the kinds it newly locked.

    From a center address the failure is counted in the address's window now (it took no place there) and
    its place in the in-flight cap is given back."""
    user_key, client_ip = reservation.user_key, reservation.client_ip
    if not reservation.at_center:
        counters = _counters(db, user_key, client_ip, now)
        locked = [kind for kind, counter in counters if lockout.settle_failure(counter, kind, settings, now)]
        _save(db, *(counter for _, counter in counters))
        return locked
    locked = []
    user = _counter(db, lockout.USER, user_key, now) if user_key else None
    if user is not None and lockout.settle_failure(user, lockout.USER, settings, now):
        locked.append(lockout.USER)
    source = _counter(db, lockout.SOURCE, client_ip, now)
    if lockout.record_failure(source, settings, now):
        locked.append(lockout.SOURCE)
    _save(db, user, source)
    _give_back(db, lockout.IN_FLIGHT, client_ip)
    return locked


def reset_user(db: Session, user_key: str) -> None:
    db.execute(delete(LoginThrottle).where(LoginThrottle.kind == lockout.USER, LoginThrottle.key == user_key))


# -- pending logins -------------------------------------------------------------------------------


def store_pending(
    db: Session, identity: Identity, id_hash: str, method: str, client_ip: str, expires_at: dt.datetime
) -> None:
    db.add(
        PendingLogin(
            id_hash=id_hash,
            username=identity.username,
            display_name=identity.display_name,
            groups=list(identity.groups),
            method=method,
            client_ip=client_ip,
            expires_at=expires_at,
        )
    )


def load_pending(db: Session, id_hash: str, client_ip: str, now: dt.datetime) -> tuple[Identity, str] | None:
    """The identity waiting for its code and the login method of its first step; bound to the address
    that took that step."""
    db.execute(delete(PendingLogin).where(PendingLogin.expires_at <= now))
    row = db.get(PendingLogin, id_hash)
    if row is None or row.client_ip != client_ip:
        return None
    return Identity(row.username, row.display_name, "", list(row.groups or [])), row.method


def drop_pending(db: Session, id_hash: str) -> None:
    db.execute(delete(PendingLogin).where(PendingLogin.id_hash == id_hash))


# -- TOTP credentials -----------------------------------------------------------------------------


def is_enrolled(db: Session, username: str) -> bool:
    row = db.get(TotpCredential, username)
    return row is not None and row.confirmed_at is not None


def check_code(db: Session, box: SecretBox, username: str, code: str, now: dt.datetime) -> None:
    """Verify a code of a confirmed credential and use up its time step; raises TotpError."""
    row = db.get(TotpCredential, username)
    if row is None or row.confirmed_at is None:
        raise TotpError("invalid", "no confirmed TOTP credential")
    _use_step(db, row, verify(box.open(username, row.secret_encrypted), code, row.last_used_step, now))


def _use_step(db: Session, row: TotpCredential, step: int) -> None:
    # The conditional UPDATE is the replay guard between brokers: of two logins racing with one code,
    # exactly one moves last_used_step forward.
    used = db.execute(
        update(TotpCredential)
        .where(
            TotpCredential.username == row.username,
            (TotpCredential.last_used_step.is_(None)) | (TotpCredential.last_used_step < step),
        )
        .values(last_used_step=step)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not used:
        raise TotpError("replayed", "TOTP code already used")


def start_enrolment(db: Session, box: SecretBox, username: str, secret: str) -> None:
    """Store a new, unconfirmed secret; a confirmed one is kept until the new one is confirmed."""
    row = db.get(TotpCredential, username)
    if row is not None and row.confirmed_at is not None:
        raise errors.Conflict("A second factor is already enrolled for this account.")
    row = row or TotpCredential(username=username)
    row.secret_encrypted, row.last_used_step = box.seal(username, secret), None
    db.add(row)


def reset_totp(db: Session, username: str, actor: str, client_ip: str, via: str) -> None:
    """Remove a user's confirmed TOTP credential (lost phone) and their pending TOTP logins; audit it.

    The user then enrols again, which is allowed only from a center network (PortalAuth.enrolment_allowed),
    and until then a login from outside that needs the second factor answers totp_enrolment_required.
    """
    if db.get(User, username) is None:
        raise UnknownUser(username)
    row = db.get(TotpCredential, username)
    if row is None or row.confirmed_at is None:
        raise TotpNotEnrolled(username)
    db.delete(row)
    # A first step already taken with the old phone in mind must not finish with its codes.
    db.execute(delete(PendingLogin).where(PendingLogin.username == username))
    db.add(
        AuditEvent(
            actor=actor[:128],
            action="totp_reset",
            result="success",
            target=username,
            source_ip=client_ip,
            detail={"via": via},
        )
    )


def confirm_enrolment(db: Session, box: SecretBox, username: str, code: str, now: dt.datetime) -> None:
    row = db.get(TotpCredential, username)
    if row is None or row.confirmed_at is not None:
        raise TotpError("invalid", "no enrolment in progress")
    _use_step(db, row, verify(box.open(username, row.secret_encrypted), code, row.last_used_step, now))
    row.confirmed_at = now
