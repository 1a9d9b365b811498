"""Portal sessions: who is logged in to the broker, from login to logout or expiry.

The browser holds a random session id in a signed cookie; the database holds only its
SHA-256, so a copy of the database cannot be replayed as a cookie. Every login gets a fresh
id (no session fixation, OWASP ASVS 3.2.1) and every outcome is audited without the password.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import insert as insert_into
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from broker import errors
from broker import login_security as guard
from broker.db import Database
from broker.db.models import AuditEvent, PortalSession, User, insert_audit_event, utcnow
from broker.signout import SignedOut, sign_out_everywhere
from monitoring.metrics import (
    LOCKOUTS,
    LOGINS,
    SESSIONS_ACTIVE,
    SESSIONS_REVOKED,
    TOTP_RESETS,
    TOTP_VERIFICATIONS,
    LoginResult,
    SignOutCause,
    TotpResult,
)
from sso.base import AuthError, Identity
from sso.base import DirectoryUnavailable as DirectoryDown
from sso.config import LockoutSettings, TotpSettings
from sso.lockout import normalize_username
from sso.login import Login, LoginMethod
from sso.second_factor import SecondFactor
from sso.totp import SecretBox, TotpError

log = logging.getLogger(__name__)

SESSION_COOKIE = "vdi_session"
SESSION_ID_BYTES = 32


@dataclass(frozen=True)
class PortalUser:
    username: str
    display_name: str
    groups: list[str] = field(default_factory=list)
    method: str = "password"

    def as_json(self) -> dict:
        return {"username": self.username, "display_name": self.display_name, "groups": list(self.groups)}


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def login_refusal(exc: AuthError) -> errors.LoginRefused:
    """The broker error for a refused login: the authenticator's status and public message only."""
    if isinstance(exc, DirectoryDown) or exc.status >= 500:
        return errors.DirectoryUnavailable(exc.public_message, status=exc.status)
    if exc.status == 401:
        return errors.InvalidCredentials(exc.public_message)
    return errors.LoginRefused(exc.public_message, status=exc.status)


def login_result(exc: AuthError) -> LoginResult:
    # A directory outage is our error, not the user's failure; alerts key on the difference.
    return LoginResult.ERROR if exc.status >= 500 else LoginResult.FAILURE


# Database work, run in Database.run's worker thread.


def record_login(
    db: Session,
    identity: Identity,
    id_hash: str,
    method: str,
    client_ip: str,
    lifetime_s: int,
    audit_detail: dict | None = None,
    until: dt.datetime | None = None,
) -> None:
    """`until`: the session ends then at the latest (a center terminal's seat ends)."""
    now = utcnow()
    expires_at = now + dt.timedelta(seconds=lifetime_s)
    # The user row, made or refreshed in one statement (INSERT … ON CONFLICT DO UPDATE) rather than read,
    # changed and flushed through the ORM: every login pays this. It is written before the portal session,
    # whose foreign key needs it (the models declare no relationships to order the unit of work by).
    insert = sqlite_insert if db.get_bind().dialect.name == "sqlite" else postgresql_insert
    values = {
        "display_name": identity.display_name,
        "groups": list(identity.groups),
        "last_login_at": now,
    }
    db.execute(
        insert(User)
        .values(username=identity.username, **values)
        .on_conflict_do_update(index_elements=[User.username], set_=values)
    )
    # The session and its audit row as plain INSERTs (no ORM instances to track and flush at commit).
    db.execute(
        insert_into(PortalSession.__table__).values(
            id_hash=id_hash,
            username=identity.username,
            method=method,
            client_ip=client_ip,
            created_at=now,
            expires_at=expires_at if until is None else min(expires_at, until),
        )
    )
    insert_audit_event(
        db,
        at=now,
        **login_audit_columns(identity.username, "success", client_ip, method, "authenticated", audit_detail),
    )


def _record_login_and_reset(
    db: Session, user_key: str, reserved: guard.Reservation | None, **login: Any
) -> None:
    """One transaction for a login that got through: its session and audit, a fresh lockout count for the
    user name, and the address's reserved attempt given back (guard.finish_success)."""
    guard.finish_success(db, user_key, reserved)
    record_login(db, **login)


def _record_unless_at_center(
    db: Session, at_center: Callable[[Session], bool], record: Callable[..., None]
) -> bool:
    """Record the login (`record`) unless its client is at a center, whose seat gate must decide first
    (PortalAuth._open_session); True when recorded."""
    if at_center(db):
        return False
    record(db)
    return True


def audit_login(
    actor: str, result: str, client_ip: str, method: str, reason: str, extra: dict | None = None
) -> AuditEvent:
    return AuditEvent(**login_audit_columns(actor, result, client_ip, method, reason, extra))


def login_audit_columns(
    actor: str, result: str, client_ip: str, method: str, reason: str, extra: dict | None = None
) -> dict:
    """A login's audit row (`extra`: e.g. a certificate login's serial and issuer)."""
    return {
        "actor": actor[:128],
        "action": "login",
        "result": result,
        "source_ip": client_ip,
        "detail": {**(extra or {}), "method": method, "reason": reason},
    }


def load_user(db: Session, id_hash: str) -> PortalUser | None:
    """The user of a live portal session: not revoked, not expired."""
    # Compared in SQL, where both sides are UTC on every backend (SQLite hands back naive datetimes).
    # Columns, not the User entity: this runs for every request, and ORM instances cost more than the query.
    row = db.execute(
        select(PortalSession.method, User.username, User.display_name, User.groups)
        .join(User, User.username == PortalSession.username)
        .where(
            PortalSession.id_hash == id_hash,
            PortalSession.revoked_at.is_(None),
            PortalSession.expires_at > utcnow(),
        )
    ).one_or_none()
    if row is None:
        return None
    method, username, display_name, groups = row
    return PortalUser(username, display_name, list(groups or []), method)


class SessionUser:
    """A request's portal session whose user is read in the first transaction of the request's own work
    (`load`), rather than in a transaction of its own before it: one transaction less per request on the
    logon path (docs/ha.md). The user is read from the database in that transaction like any other time,
    so a session revoked on any broker is refused at once; nothing is kept between requests.
    """

    __slots__ = ("id_hash", "user")

    def __init__(self, session_id: str | None) -> None:
        self.id_hash = hash_session_id(session_id) if session_id else None
        self.user: PortalUser | None = None

    def load(self, db: Session) -> PortalUser:
        """The session's user (live: not revoked, not expired), else NotAuthenticated, which rolls the
        caller's transaction back before it did anything."""
        if self.user is None:
            user = load_user(db, self.id_hash) if self.id_hash else None
            if user is None:
                raise errors.NotAuthenticated()
            self.user = user
        return self.user


def user_of(db: Session, who: PortalUser | SessionUser) -> PortalUser:
    """`who` as a PortalUser: read in this transaction when it is a SessionUser."""
    return who.load(db) if isinstance(who, SessionUser) else who


def revoke(db: Session, id_hash: str, client_ip: str) -> str | None:
    """Mark the portal session revoked; return its user, or None if it was not live."""
    portal_session = db.get(PortalSession, id_hash)
    if portal_session is None or portal_session.revoked_at is not None:
        return None
    portal_session.revoked_at = utcnow()
    db.add(AuditEvent(actor=portal_session.username, action="logout", result="success", source_ip=client_ip))
    return portal_session.username


class PortalAuth:
    """Logs users in by any enabled login method (then TOTP where the policy asks) and out, and resolves
    cookies to users.

    Order of every login: lock check (methods with guessable secrets, before the method sees them) →
    the method's template (sso/login.py) → count a failure, or → second factor by policy
    (sso/second_factor.py) → portal session. Every outcome is audited.
    """

    def __init__(
        self,
        db: Database,
        methods: Mapping[str, LoginMethod],
        session_lifetime_s: int,
        *,
        lockout: LockoutSettings | None = None,
        totp: TotpSettings | None = None,
        totp_key: str = "",
        seat_gate: Callable[[str, str, bytes | None], Awaitable[dt.datetime | None]] | None = None,
        at_center: Callable[[Session, str, bytes | None], bool] | None = None,
    ) -> None:
        self.db = db
        # At a center terminal a login needs a seat (broker/reservations.py): it refuses, audited, without;
        # with one, it answers when the seat ends, and the portal session ends then too.
        self.seat_gate = seat_gate
        # Whether a client (address, device certificate) is at a center, asked in a transaction: away from
        # centers the gate has nothing to say, so the login's own transaction asks and records it at once.
        self.at_center = at_center
        self.methods = dict(methods)
        self.session_lifetime_s = session_lifetime_s
        self.lockout = lockout or LockoutSettings()
        self.totp = totp or TotpSettings()
        self.second_factor = SecondFactor(self.totp)
        self.secret_box = SecretBox(totp_key or secrets.token_hex(32))

    def method(self, name: str) -> LoginMethod:
        """The enabled login method `name`; a disabled one is not there (404), as its routes are not."""
        method = self.methods.get(name)
        if method is None:
            raise errors.NotFound(f"Sign-in by {name} is not enabled.")
        return method

    # -- the first step: any login method --------------------------------------------------------

    async def login(
        self, method_name: str, credentials: object, client_ip: str, device: bytes | None = None
    ) -> tuple[PortalUser, str]:
        """Log in by the method and open a portal session; return the user and the new session id.

        Raises the method's AuthError (audited; the handler turns it into its answer), a lock error,
        or TotpRequired (with a pending-login id) when the second-factor policy asks for a code.
        `device`: the DER of the TLS client certificate of the browser's machine (a center terminal's).
        """
        method = self.method(method_name)
        username = method.username_of(credentials)
        user_key = normalize_username(username)
        reserved = None
        if method.counts_failures:
            # Before the method sees the secret: at most the lockout limit of guesses are ever checked.
            reserved = await self._reserve_attempt(user_key, username, client_ip, method.name)
        audit: dict[str, str] = {}
        try:
            login = await method.login(credentials, audit)
        except AuthError as exc:
            await self._refused(method, username, client_ip, exc, audit, reserved)
            raise
        except BaseException:
            if reserved is not None:
                await self._release_attempt(reserved)
            raise
        if self.second_factor.required(method.name, client_ip):
            if reserved is not None:
                await self._release_attempt(reserved)  # the right secret is no guess
            await self._ask_for_totp(login, client_ip)
        # The right secret is no guess: the session's own transaction gives the attempt back.
        return await self._open_session(
            login.identity, method.name, client_ip, login.audit, device=device, reserved=reserved
        )

    def enrolment_allowed(self, client_ip: str) -> bool:
        return self.second_factor.enrolment_allowed(client_ip)

    async def _reserve_attempt(
        self, user_key: str, username: str, client_ip: str, method: str
    ) -> guard.Reservation:
        reservation = await self.db.run(
            partial(
                guard.reserve_attempt,
                settings=self.lockout,
                user_key=user_key,
                client_ip=client_ip,
                now=utcnow(),
            )
        )
        if not reservation.refused:
            return reservation
        source_wait = reservation.source_wait
        if reservation.busy:
            # A center address with its cap of logins in flight: nothing is locked, the next may go soon.
            reason = "source address busy: too many logins in flight"
        else:
            reason = "source address locked" if source_wait else "user locked"
        LOGINS.labels(method=method, result=LoginResult.FAILURE.value).inc()
        log.warning(
            "login refused: user=%r method=%s ip=%s reason=%s", username[:128], method, client_ip, reason
        )
        await self._audit(username, LoginResult.FAILURE.value, client_ip, method, reason)
        raise guard.SourceLocked(source_wait) if source_wait else guard.AccountLocked()

    async def _release_attempt(self, reservation: guard.Reservation) -> None:
        await self.db.run(partial(guard.release_attempt, reservation=reservation))

    async def _settle_failure(self, username: str, client_ip: str, reservation: guard.Reservation) -> None:
        locked = await self.db.run(
            partial(guard.settle_failure, settings=self.lockout, reservation=reservation, now=utcnow())
        )
        await self._report_locks(locked, username, client_ip)

    async def _report_locks(self, locked: list[str], username: str, client_ip: str) -> None:
        for kind in locked:
            LOCKOUTS.labels(kind=kind).inc()
            log.warning(
                "lockout: %s %r locked for %d s",
                kind,
                username[:128] if kind == "user" else client_ip,
                self.lockout.lock_s,
            )
            await self._audit(username, "locked", client_ip, "lockout", f"{kind} locked")

    # -- the TOTP step --------------------------------------------------------------------------

    async def _ask_for_totp(self, login: Login, client_ip: str) -> None:
        username, method = login.username, login.method
        if not await self.db.run(partial(guard.is_enrolled, username=username)):
            reason = f"{method} ok; no TOTP enrolled, enrolment only inside a center"
            await self._audit(
                username, LoginResult.FAILURE.value, client_ip, method, reason, extra=login.audit
            )
            LOGINS.labels(method=method, result=LoginResult.FAILURE.value).inc()
            raise guard.TotpEnrolmentRequired()
        pending = new_session_id()
        expires_at = utcnow() + dt.timedelta(seconds=self.totp.pending_ttl_s)
        await self.db.run(
            partial(
                guard.store_pending,
                identity=login.identity,
                id_hash=hash_session_id(pending),
                method=method,
                client_ip=client_ip,
                expires_at=expires_at,
            )
        )
        reason = f"{method} ok; TOTP code required"
        await self._audit(username, "pending", client_ip, method, reason, extra=login.audit)
        raise guard.TotpRequired(pending)

    async def login_totp(self, pending: str, code: str, client_ip: str) -> tuple[PortalUser, str]:
        """Finish a pending login with its TOTP code; return the user and the new session id."""
        id_hash = hash_session_id(pending)
        waiting = await self.db.run(
            partial(guard.load_pending, id_hash=id_hash, client_ip=client_ip, now=utcnow())
        )
        if waiting is None:
            TOTP_VERIFICATIONS.labels(result=TotpResult.EXPIRED.value).inc()
            await self._audit(
                "", LoginResult.FAILURE.value, client_ip, "totp", "unknown or expired pending login"
            )
            raise guard.PendingLoginExpired()
        identity, method = waiting
        # Six digits can be guessed whatever the first step was: each code takes a place under the lock.
        user_key = normalize_username(identity.username)
        reserved = await self._reserve_attempt(user_key, identity.username, client_ip, method)
        try:
            await self.db.run(
                partial(
                    guard.check_code, box=self.secret_box, username=identity.username, code=code, now=utcnow()
                )
            )
        except TotpError as exc:
            await self._totp_refused(identity.username, method, client_ip, exc, reserved)
            raise guard.InvalidTotp() from None
        except BaseException:
            await self._release_attempt(reserved)
            raise
        TOTP_VERIFICATIONS.labels(result=TotpResult.SUCCESS.value).inc()
        try:
            await self.db.run(partial(guard.drop_pending, id_hash=id_hash))
        except BaseException:
            await self._release_attempt(reserved)
            raise
        return await self._open_session(identity, method, client_ip, second_factor=True, reserved=reserved)

    async def _totp_refused(
        self, username: str, method: str, client_ip: str, exc: TotpError, reserved: guard.Reservation
    ) -> None:
        TOTP_VERIFICATIONS.labels(result=exc.result).inc()
        LOGINS.labels(method=method, result=LoginResult.FAILURE.value).inc()
        log.warning("login refused: user=%r method=totp ip=%s reason=%s", username, client_ip, exc.reason)
        await self._audit(username, LoginResult.FAILURE.value, client_ip, "totp", exc.reason)
        # A wrong code counts like a wrong password (its place was reserved): the same lock stops guessing.
        await self._settle_failure(username, client_ip, reserved)

    # -- enrolment (only from inside a center: the place where the user's identity is vouched for) --

    async def start_enrolment(self, user: PortalUser, client_ip: str) -> str:
        """A fresh secret for the user's app, stored unconfirmed; returns its otpauth:// URI."""
        from sso.totp import new_secret, provisioning_uri

        secret = new_secret()
        await self.db.run(
            partial(guard.start_enrolment, box=self.secret_box, username=user.username, secret=secret)
        )
        await self._audit(
            user.username, "started", client_ip, "totp", "enrolment started", action="totp_enrol"
        )
        return provisioning_uri(secret, user.username, self.totp.issuer)

    async def confirm_enrolment(self, user: PortalUser, code: str, client_ip: str) -> None:
        try:
            await self.db.run(
                partial(
                    guard.confirm_enrolment,
                    box=self.secret_box,
                    username=user.username,
                    code=code,
                    now=utcnow(),
                )
            )
        except TotpError as exc:
            TOTP_VERIFICATIONS.labels(result=exc.result).inc()
            await self._audit(user.username, "failure", client_ip, "totp", exc.reason, action="totp_enrol")
            raise guard.InvalidTotp() from None
        TOTP_VERIFICATIONS.labels(result=TotpResult.SUCCESS.value).inc()
        await self._audit(
            user.username, "success", client_ip, "totp", "enrolment confirmed", action="totp_enrol"
        )

    async def reset_totp(self, username: str, actor: str, client_ip: str) -> None:
        """An administrator removes the user's second factor (lost phone); they enrol again at a center."""
        await self.db.run(
            partial(guard.reset_totp, username=username, actor=actor, client_ip=client_ip, via="api")
        )
        TOTP_RESETS.inc()
        log.info("TOTP enrolment reset: user=%s by=%s ip=%s", username, actor, client_ip)

    # -- sessions -------------------------------------------------------------------------------

    async def _open_session(
        self,
        identity: Identity,
        method: str,
        client_ip: str,
        audit_detail: dict | None = None,
        second_factor: bool = False,
        device: bytes | None = None,
        reserved: guard.Reservation | None = None,
    ) -> tuple[PortalUser, str]:
        """`reserved`: the lockout places this login's secret took (a right secret is no guess): the
        address's is given back in the session's transaction, both if the login stops before it."""
        user_key = normalize_username(identity.username)
        session_id = new_session_id()
        # The session and its audit say how the user got in; the login counter counts by method only.
        session_method = f"{method}+totp" if second_factor else method
        record = partial(
            _record_login_and_reset,
            identity=identity,
            id_hash=hash_session_id(session_id),
            method=session_method,
            client_ip=client_ip,
            lifetime_s=self.session_lifetime_s,
            audit_detail=audit_detail or None,
            user_key=user_key,
            reserved=reserved,
        )
        try:
            recorded = False
            if self.seat_gate is not None and self.at_center is not None:
                # Most logins come from away from any center: one transaction finds that and records them.
                at_center = partial(self.at_center, client_ip=client_ip, device=device)
                recorded = await self.db.run(
                    partial(_record_unless_at_center, at_center=at_center, record=record)
                )
            if not recorded:
                seat_ends = None
                if self.seat_gate is not None:
                    try:
                        seat_ends = await self.seat_gate(identity.username, client_ip, device)
                    except errors.LoginRefused:
                        LOGINS.labels(method=method, result=LoginResult.FAILURE.value).inc()
                        raise
                await self.db.run(partial(record, until=seat_ends))
        except BaseException:
            if reserved is not None:
                await self._release_attempt(reserved)
            raise
        LOGINS.labels(method=method, result=LoginResult.SUCCESS.value).inc()
        log.info("login succeeded: user=%s method=%s ip=%s", identity.username, session_method, client_ip)
        user = PortalUser(identity.username, identity.display_name, list(identity.groups), session_method)
        return user, session_id

    async def record_refusal(self, method: str, client_ip: str, exc: AuthError, audit: dict) -> None:
        """Audit a login refused before it reached its method (a certificate the TLS handshake refused)."""
        await self._audit_refusal(method, "", client_ip, exc, audit)

    async def _refused(
        self,
        method: LoginMethod,
        username: str,
        client_ip: str,
        exc: AuthError,
        audit: dict,
        reserved: guard.Reservation | None,
    ) -> None:
        await self._audit_refusal(method.name, username, client_ip, exc, audit)
        if reserved is None:
            return
        if exc.status == 401:
            await self._settle_failure(username, client_ip, reserved)
        else:
            # A directory outage is nobody's guess: only refused credentials keep their place counted.
            await self._release_attempt(reserved)

    async def _audit_refusal(
        self, method: str, username: str, client_ip: str, exc: AuthError, audit: dict
    ) -> None:
        result = login_result(exc)
        LOGINS.labels(method=method, result=result.value).inc()
        # The reason (e.g. "wrong password") is for operators; the user sees only the public message.
        log.warning(
            "login refused: user=%r method=%s ip=%s reason=%s%s",
            username[:128],
            method,
            client_ip,
            exc.reason,
            f" detail={audit}" if audit else "",
        )
        await self._audit(username, result.value, client_ip, method, exc.reason, extra=audit)

    async def _audit(
        self,
        username: str,
        result: str,
        client_ip: str,
        method: str,
        reason: str,
        action: str = "login",
        extra: dict | None = None,
    ) -> None:
        event = audit_login((username or "").strip(), result, client_ip, method, reason, extra)
        event.action = action
        await self.db.run(lambda db: db.add(event))

    async def user_for(self, session_id: str | None) -> PortalUser | None:
        if not session_id:
            return None
        return await self.db.run(partial(load_user, id_hash=hash_session_id(session_id)))

    async def logout(self, session_id: str | None, client_ip: str) -> str | None:
        """End this one portal session (also used to drop an old cookie at a new login); returns its user."""
        if not session_id:
            return None
        username = await self.db.run(
            partial(revoke, id_hash=hash_session_id(session_id), client_ip=client_ip)
        )
        if username:
            log.info("logout: user=%s ip=%s", username, client_ip)
        return username

    async def sign_out(self, session_id: str | None, client_ip: str) -> None:
        """Single sign-out: this session, then every other session of the user and their consoles."""
        username = await self.logout(session_id, client_ip)
        if username:
            await self.sign_out_user(username, username, SignOutCause.LOGOUT, client_ip)

    async def sign_out_user(
        self, username: str, actor: str, cause: SignOutCause, client_ip: str
    ) -> SignedOut:
        revoked = await self.db.run(
            partial(
                sign_out_everywhere, username=username, actor=actor, cause=cause.value, client_ip=client_ip
            )
        )
        SESSIONS_REVOKED.labels(cause=cause.value).inc(revoked.portal_sessions + revoked.desktop_sessions)
        SESSIONS_ACTIVE.dec(revoked.desktop_sessions)
        log.info(
            "sessions revoked: user=%s by=%s cause=%s portal=%d desktop=%d",
            username,
            actor,
            cause.value,
            revoked.portal_sessions,
            revoked.desktop_sessions,
        )
        return revoked
