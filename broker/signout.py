"""Single sign-out: end every portal session of a user, and the console access of their desktop sessions.

A revoke is a disconnect, not a logoff: the user's desktop sessions are marked ended (so their console
tokens no longer open anything and a ConsoleCutoff row tells the gateways why), while the desktops
themselves keep running with the user's work in them. The next connect opens a new session on the same
desktop. Everything happens in the database, so every broker and gateway sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker.db.models import (
    AuditEvent,
    ConsoleCutoff,
    DesktopSession,
    PendingLogin,
    PortalSession,
    User,
    utcnow,
)


@dataclass(frozen=True)
class SignedOut:
    portal_sessions: int
    desktop_sessions: int

    def as_json(self) -> dict:
        return {"portal_sessions": self.portal_sessions, "desktop_sessions": self.desktop_sessions}


def user_exists(db: Session, username: str) -> bool:
    return db.get(User, username) is not None


def sign_out_everywhere(db: Session, username: str, actor: str, cause: str, client_ip: str) -> SignedOut:
    """End the user's portal sessions, pending logins and desktop sessions' console access; audit it."""
    now = utcnow()
    portal = db.execute(
        update(PortalSession)
        .where(PortalSession.username == username, PortalSession.revoked_at.is_(None))
        .values(revoked_at=now)
    ).rowcount
    db.execute(delete(PendingLogin).where(PendingLogin.username == username))
    desktop_sessions = db.scalars(
        select(DesktopSession).where(DesktopSession.username == username, DesktopSession.state == "active")
    ).all()
    for session in desktop_sessions:
        session.state, session.ended_at = "ended", now
        db.add(ConsoleCutoff(session_id=session.id, revoked_at=now, actor=actor[:128], reason=cause))
    revoked = SignedOut(portal, len(desktop_sessions))
    if cause == "logout" and not (portal or desktop_sessions):
        return revoked  # the "logout" audit event already tells the whole story
    db.add(
        AuditEvent(
            actor=actor[:128],
            action="revoke_sessions",
            result="success",
            target=username,
            source_ip=client_ip,
            detail={"cause": cause, **revoked.as_json()},
        )
    )
    return revoked
