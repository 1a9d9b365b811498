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
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import errors
from broker.db import Database
from broker.db.models import AuditEvent, PortalSession, User, utcnow
from monitoring.metrics import LOGINS, LoginResult
from sso.base import Authenticator, AuthError, Identity
from sso.base import DirectoryUnavailable as DirectoryDown

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
    db: Session, identity: Identity, id_hash: str, method: str, client_ip: str, lifetime_s: int
) -> None:
    now = utcnow()
    user = db.get(User, identity.username) or User(username=identity.username)
    user.display_name = identity.display_name
    user.groups = list(identity.groups)
    user.last_login_at = now
    db.add(user)
    # The models declare no relationships, so the unit of work does not order the inserts by
    # foreign key: the user row must exist before its portal session.
    db.flush()
    db.add(
        PortalSession(
            id_hash=id_hash,
            username=identity.username,
            method=method,
            client_ip=client_ip,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=lifetime_s),
        )
    )
    db.add(audit_login(identity.username, "success", client_ip, method, "authenticated"))


def audit_login(actor: str, result: str, client_ip: str, method: str, reason: str) -> AuditEvent:
    return AuditEvent(
        actor=actor[:128],
        action="login",
        result=result,
        source_ip=client_ip,
        detail={"method": method, "reason": reason},
    )


def load_user(db: Session, id_hash: str) -> PortalUser | None:
    """The user of a live portal session: not revoked, not expired."""
    # Compared in SQL, where both sides are UTC on every backend (SQLite hands back naive datetimes).
    row = db.execute(
        select(PortalSession.method, User)
        .join(User, User.username == PortalSession.username)
        .where(
            PortalSession.id_hash == id_hash,
            PortalSession.revoked_at.is_(None),
            PortalSession.expires_at > utcnow(),
        )
    ).one_or_none()
    if row is None:
        return None
    method, user = row
    return PortalUser(user.username, user.display_name, list(user.groups or []), method)


def revoke(db: Session, id_hash: str, client_ip: str) -> str | None:
    """Mark the portal session revoked; return its user, or None if it was not live."""
    portal_session = db.get(PortalSession, id_hash)
    if portal_session is None or portal_session.revoked_at is not None:
        return None
    portal_session.revoked_at = utcnow()
    db.add(AuditEvent(actor=portal_session.username, action="logout", result="success", source_ip=client_ip))
    return portal_session.username


class PortalAuth:
    """Logs users in and out and resolves a cookie's session id to the user."""

    def __init__(self, db: Database, authenticator: Authenticator, session_lifetime_s: int) -> None:
        self.db = db
        self.authenticator = authenticator
        self.session_lifetime_s = session_lifetime_s

    async def login(self, username: str, password: str, client_ip: str) -> tuple[PortalUser, str]:
        """Authenticate and open a portal session; return the user and the new session id."""
        method = self.authenticator.method
        try:
            identity = await self.authenticator.authenticate(username, password)
        except AuthError as exc:
            await self._refused(username, client_ip, method, exc)
            raise login_refusal(exc) from None
        session_id = new_session_id()
        await self.db.run(
            partial(
                record_login,
                identity=identity,
                id_hash=hash_session_id(session_id),
                method=method,
                client_ip=client_ip,
                lifetime_s=self.session_lifetime_s,
            )
        )
        LOGINS.labels(method=method, result=LoginResult.SUCCESS.value).inc()
        log.info("login succeeded: user=%s method=%s ip=%s", identity.username, method, client_ip)
        return PortalUser(identity.username, identity.display_name, list(identity.groups), method), session_id

    async def _refused(self, username: str, client_ip: str, method: str, exc: AuthError) -> None:
        result = login_result(exc)
        LOGINS.labels(method=method, result=result.value).inc()
        # The reason (e.g. "wrong password") is for operators; the user sees only the public message.
        log.warning(
            "login refused: user=%r method=%s ip=%s reason=%s", username[:128], method, client_ip, exc.reason
        )
        event = audit_login((username or "").strip(), result.value, client_ip, method, exc.reason)
        await self.db.run(lambda db: db.add(event))

    async def user_for(self, session_id: str | None) -> PortalUser | None:
        if not session_id:
            return None
        return await self.db.run(partial(load_user, id_hash=hash_session_id(session_id)))

    async def logout(self, session_id: str | None, client_ip: str) -> None:
        if not session_id:
            return
        username = await self.db.run(
            partial(revoke, id_hash=hash_session_id(session_id), client_ip=client_ip)
        )
        if username:
            log.info("logout: user=%s ip=%s", username, client_ip)
