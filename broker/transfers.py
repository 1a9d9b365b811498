"""Transfer requests between network zones (망연계): the one sanctioned way across the zone boundary.

Nothing is copied between the business and the internet zone (the gateway blocks the clipboard there),
so a user who needs a file or a text on the other side asks for it: the content, a reason, the zones.
The request is checked against `[transfers]` limits (size, file type), run through the scanning hook
(`scan_command`; infected or failing: `blocked`), and waits for an approver: a member of one of
`approver_groups` who shares another directory group with the requester, never the requester. Approved,
it is delivered when the requester fetches it from the other zone's desktop; rejected or blocked, it
delivers nothing and its content is dropped at once. Every step is audited (size and SHA-256, never the
content) and counted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import errors
from broker.auth import PortalUser
from broker.config import TransferSettings
from broker.db import Database
from broker.db.models import AuditEvent, TransferRequest, utcnow
from monitoring.metrics import TRANSFERS, TransferOutcome

log = logging.getLogger(__name__)

ZONES = ("business", "internet")
# What a file name may be: no path, no control characters (it is shown, and offered as a download).
FILENAME_FORBIDDEN = set('/\\\0\r\n"')


class UnknownTransfer(errors.NotFound):
    reason = "unknown_transfer"
    message = "There is no such transfer request."


class TransferNotAllowed(errors.Forbidden):
    reason = "transfer_not_allowed"
    message = "You may not decide this transfer request."


class TransferState(errors.Conflict):
    reason = "transfer_state"
    message = "The transfer request is not in a state that allows this."


class NewTransfer(BaseModel):
    """What a user asks to move: a text, or a file (its bytes come separately), with a reason."""

    model_config = ConfigDict(extra="forbid")

    to_zone: Literal["business", "internet"]
    reason: str = Field(min_length=3, max_length=512)
    text: str | None = Field(None, min_length=1)
    filename: str | None = Field(None, min_length=1, max_length=255)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool
    note: str = Field("", max_length=512)


@dataclass(frozen=True)
class TransferView:
    id: int
    username: str
    from_zone: str
    to_zone: str
    kind: str
    filename: str
    size_bytes: int
    sha256: str
    reason: str
    state: str
    scan_result: str
    decided_by: str | None
    decision_note: str
    created_at: dt.datetime

    @classmethod
    def of(cls, row: TransferRequest) -> TransferView:
        return cls(
            row.id,
            row.username,
            row.from_zone,
            row.to_zone,
            row.kind,
            row.filename,
            row.size_bytes,
            row.sha256,
            row.reason,
            row.state,
            row.scan_result,
            row.decided_by,
            row.decision_note,
            row.created_at,
        )

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "username": self.username,
            "from_zone": self.from_zone,
            "to_zone": self.to_zone,
            "kind": self.kind,
            "filename": self.filename,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "reason": self.reason,
            "state": self.state,
            "scan_result": self.scan_result,
            "decided_by": self.decided_by,
            "decision_note": self.decision_note,
            "created_at": self.created_at.isoformat(),
        }


# -- checks ---------------------------------------------------------------------------------------


def check_content(settings: TransferSettings, new: NewTransfer, data: bytes | None) -> tuple[str, bytes]:
    """(kind, content) of a request within the limits; a 400 naming the field otherwise."""
    if (new.text is None) == (data is None):
        raise errors.InvalidField("text: give a text or a file, not both or neither", field="text")
    if new.text is not None:
        content, kind, field = new.text.encode("utf-8"), "text", "text"
    else:
        content, kind, field = data, "file", "file"
        check_filename(settings, new.filename)
    if not content:
        raise errors.InvalidField(f"{field}: is empty", field=field)
    if len(content) > settings.max_bytes:
        raise errors.InvalidField(
            f"{field}: {len(content)} bytes, more than the {settings.max_bytes} allowed", field=field
        )
    return kind, content


def check_filename(settings: TransferSettings, filename: str | None) -> None:
    if not filename or set(filename) & FILENAME_FORBIDDEN or filename.startswith("."):
        raise errors.InvalidField("filename: a plain file name is needed", field="filename")
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in settings.allowed_extensions:
        allowed = ", ".join(settings.allowed_extensions)
        raise errors.InvalidField(
            f"filename: type .{extension} is not allowed (allowed: {allowed})", field="filename"
        )


def may_decide(settings: TransferSettings, approver: PortalUser, requester: str, groups: list[str]) -> bool:
    """An approver group member who shares another directory group with the requester, and is not them."""
    approver_groups = {g.lower() for g in settings.approver_groups}
    mine = {g.lower() for g in approver.groups}
    if approver.username == requester or not mine & approver_groups:
        return False
    return bool((mine - approver_groups) & {g.lower() for g in groups})


def scan(settings: TransferSettings, content: bytes) -> str:
    """The scanning hook's verdict: clean, infected, error, or unscanned (no hook). Blocking: an executor's."""
    if settings.scan_command is None:
        return "unscanned"
    with tempfile.TemporaryDirectory(prefix="vdi-transfer-") as directory:
        path = os.path.join(directory, "content")
        with open(path, "wb") as file:
            file.write(content)
        argv = [arg.replace("{path}", path) for arg in settings.scan_command]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=settings.scan_timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("transfer scan failed to run: %s", exc)
            return "error"
    return {0: "clean", 1: "infected"}.get(done.returncode, "error")


# -- database work --------------------------------------------------------------------------------


def _audit(
    db: Session, actor: str, action: str, result: str, row: TransferRequest, ip: str, **more: Any
) -> None:
    detail = {"size": row.size_bytes, "sha256": row.sha256, "from": row.from_zone, "to": row.to_zone, **more}
    db.add(
        AuditEvent(
            actor=actor[:128],
            action=action,
            result=result,
            target=f"transfer/{row.id}",
            source_ip=ip,
            detail=detail,
        )
    )


def store(db: Session, row: TransferRequest, client_ip: str) -> TransferView:
    if row.state == "blocked":
        row.content = None  # what the scan refused never waits anywhere
    db.add(row)
    db.flush()
    result = "blocked" if row.state == "blocked" else "success"
    _audit(
        db, row.username, "transfer.request", result, row, client_ip, reason=row.reason, scan=row.scan_result
    )
    return TransferView.of(row)


def mine(db: Session, username: str) -> list[TransferView]:
    rows = db.scalars(
        select(TransferRequest)
        .where(TransferRequest.username == username)
        .order_by(TransferRequest.id.desc())
    )
    return [TransferView.of(row) for row in rows]


def pending_for(db: Session, settings: TransferSettings, approver: PortalUser) -> list[TransferView]:
    rows = db.scalars(
        select(TransferRequest).where(TransferRequest.state == "pending").order_by(TransferRequest.id)
    )
    return [TransferView.of(r) for r in rows if may_decide(settings, approver, r.username, r.groups or [])]


def decide(
    db: Session,
    settings: TransferSettings,
    transfer_id: int,
    approver: PortalUser,
    decision: Decision,
    ip: str,
) -> TransferView:
    row = db.get(TransferRequest, transfer_id)
    if row is None:
        raise UnknownTransfer(field="id")
    if not may_decide(settings, approver, row.username, row.groups or []):
        raise TransferNotAllowed(
            "Only a member of an approver group who shares a directory group with the requester decides.",
        )
    if row.state != "pending":
        raise TransferState(f"The transfer request is {row.state}, not pending.", field="id")
    row.state = "approved" if decision.approve else "rejected"
    row.decided_by, row.decided_at, row.decision_note = approver.username, utcnow(), decision.note
    if not decision.approve:
        row.content = None  # a rejected request delivers nothing, ever
    _audit(
        db,
        approver.username,
        "transfer.decide",
        row.state,
        row,
        ip,
        requester=row.username,
        note=decision.note,
    )
    return TransferView.of(row)


def deliver(db: Session, transfer_id: int, username: str, ip: str) -> tuple[TransferView, bytes]:
    """The approved content to its requester, once; the request is then delivered and its content dropped."""
    row = db.get(TransferRequest, transfer_id)
    if row is None or row.username != username:
        raise UnknownTransfer(field="id")
    if row.state != "approved" or row.content is None:
        raise TransferState(
            f"The transfer request is {row.state}; only an approved one is delivered.", field="id"
        )
    content = row.content
    row.state, row.delivered_at, row.content = "delivered", utcnow(), None
    _audit(db, username, "transfer.deliver", "success", row, ip)
    return TransferView.of(row), content


# -- the service ----------------------------------------------------------------------------------


class Transfers:
    def __init__(self, db: Database, settings: TransferSettings) -> None:
        self.db = db
        self.settings = settings

    async def request(
        self, user: PortalUser, new: NewTransfer, data: bytes | None, client_zone: str | None, client_ip: str
    ) -> TransferView:
        """A request from the zone other than `to_zone`; at a center terminal (`client_zone`), from its zone."""
        from_zone = next(zone for zone in ZONES if zone != new.to_zone)
        if client_zone is not None and client_zone != from_zone:
            raise errors.InvalidField(
                f"to_zone: this terminal is on the {client_zone} zone already", field="to_zone"
            )
        kind, content = check_content(self.settings, new, data)
        verdict = await asyncio.get_running_loop().run_in_executor(None, scan, self.settings, content)
        row = TransferRequest(
            username=user.username,
            from_zone=from_zone,
            to_zone=new.to_zone,
            kind=kind,
            filename=new.filename or "",
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            content=content,
            reason=new.reason,
            groups=list(user.groups),
            state="pending" if verdict in ("clean", "unscanned") else "blocked",
            scan_result=verdict,
        )
        view = await self.db.run(partial(store, row=row, client_ip=client_ip))
        outcome = TransferOutcome.BLOCKED if view.state == "blocked" else TransferOutcome.REQUESTED
        TRANSFERS.labels(outcome=outcome.value).inc()
        log.info(
            "transfer %d requested: user=%s %s→%s state=%s",
            view.id,
            user.username,
            from_zone,
            new.to_zone,
            view.state,
        )
        return view

    async def decide(
        self, transfer_id: int, approver: PortalUser, decision: Decision, client_ip: str
    ) -> TransferView:
        view = await self.db.run(
            partial(
                decide,
                settings=self.settings,
                transfer_id=transfer_id,
                approver=approver,
                decision=decision,
                ip=client_ip,
            )
        )
        TRANSFERS.labels(outcome=TransferOutcome(view.state).value).inc()
        return view

    async def deliver(self, transfer_id: int, username: str, client_ip: str) -> tuple[TransferView, bytes]:
        view, content = await self.db.run(
            partial(deliver, transfer_id=transfer_id, username=username, ip=client_ip)
        )
        TRANSFERS.labels(outcome=TransferOutcome.DELIVERED.value).inc()
        return view, content

    async def mine(self, username: str) -> list[TransferView]:
        return await self.db.run(partial(mine, username=username))

    async def pending_for(self, approver: PortalUser) -> list[TransferView]:
        return await self.db.run(partial(pending_for, settings=self.settings, approver=approver))
