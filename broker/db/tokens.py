"""Console tokens: random, hashed at rest, single use, short-lived, bound to session and target.

Shared by the broker (issue) and the gateway and websockify plugin (consume).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from broker.db.models import ConsoleToken, Desktop, DesktopSession, utcnow
from hypervisor.config import SshAddress

TOKEN_BYTES = 32  # 256 random bits, twice the 128 the design asks for
# What secrets.token_urlsafe(TOKEN_BYTES) makes: 43 characters of the URL-safe base64 alphabet. Anything
# else is refused before the database is asked, so garbage costs no query.
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
# Expired tokens stay this long (for "expired" rather than "unknown" answers), then the broker purges them.
PURGE_AFTER_S = 3600


class TokenRefused(Exception):
    """The token cannot open a tunnel. `reason` is safe to show and log; the token never is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ConsolePolicy:
    """What a console may do, from its desktop's pool, fixed when the token is issued.

    clipboard: "both", "to_desktop" (browser to desktop only), "to_client" (desktop to browser only)
    or "none"; `clipboard_max_bytes` caps one transfer (longer text is cut); `clipboard_text_only`
    drops other formats of the Extended Clipboard (rich text, HTML, images, files); a console whose
    terminal is on another network zone than its pool carries no clipboard (`crosses_zones`).
    recording: "off", "on" (record when possible; a failed recording never ends the console) or
    "required" (no recording, no console: docs/recording.md).
    """

    clipboard: str = "both"
    clipboard_max_bytes: int = 1024 * 1024
    clipboard_text_only: bool = False
    recording: str = "off"
    # Network zones (docs/centers.md): the pool's, and the center terminal's the console was opened from
    # (None away from centers). Different zones: no clipboard either way unless cross_zone_clipboard.
    zone: str | None = None
    client_zone: str | None = None
    cross_zone_clipboard: bool = False

    @property
    def crosses_zones(self) -> bool:
        known = self.zone is not None and self.client_zone is not None
        return known and self.zone != self.client_zone and not self.cross_zone_clipboard

    def as_json(self) -> dict:
        return {
            "clipboard": self.clipboard,
            "clipboard_max_bytes": self.clipboard_max_bytes,
            "clipboard_text_only": self.clipboard_text_only,
            "recording": self.recording,
            "zone": self.zone,
            "client_zone": self.client_zone,
            "cross_zone_clipboard": self.cross_zone_clipboard,
        }

    @classmethod
    def of(cls, stored: dict | None) -> ConsolePolicy:
        """The stored policy; unknown keys are ignored, a token without one gets the defaults."""
        stored = stored or {}
        return cls(**{key: stored[key] for key in cls.__dataclass_fields__ if key in stored})


@dataclass(frozen=True)
class ConsoleTarget:
    """Where a tunnel goes. `host`/`port` is the display as its hypervisor host sees it.

    Route "direct": the gateway connects there by TCP. Route "ssh": it logs in to `ssh` (the host's
    sshd) and opens a channel to `host`/`port` from there, usually the host's loopback.
    """

    session_id: str
    desktop_id: int
    host: str
    port: int
    route: str = "direct"
    ssh: SshAddress | None = None  # None with route "ssh": the host has no usable SSH address
    host_name: str | None = None  # the hypervisor host's inventory name, for logs
    username: str = ""
    domain_name: str = ""
    # The desktop's sealed VNC password (broker/db/vnc_passwords.py); None: an unauthenticated display.
    vnc_password_sealed: str | None = field(default=None, repr=False)
    policy: ConsolePolicy = field(default_factory=ConsolePolicy)
    pool_name: str = ""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mask(token: str | None) -> str:
    return "***" if token else ""


def issue_token(
    db: Session,
    *,
    session_id: str,
    desktop_id: int,
    host: str,
    port: int,
    ttl_s: int,
    route: str = "direct",
    ssh_address: str | None = None,
    now: dt.datetime | None = None,
    policy: ConsolePolicy | None = None,
) -> str:
    """A new token for the display at host:port, reached by `route` (through `ssh_address` for "ssh")."""
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    db.add(
        ConsoleToken(
            token_hash=hash_token(token),
            session_id=session_id,
            desktop_id=desktop_id,
            target_host=host,
            target_port=port,
            route=route,
            ssh_address=ssh_address,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl_s),
            policy=policy.as_json() if policy is not None else None,
        )
    )
    return token


def consume_token(
    db: Session | Connection, token: str | None, now: dt.datetime | None = None
) -> ConsoleTarget:
    """Mark the token used and return its target, or raise TokenRefused saying why (in the transaction of
    `db`: an ORM session, or a Core connection, which costs less: Database.run_statements)."""
    if not token or not TOKEN_SHAPE.match(token):
        raise TokenRefused("missing or malformed console token")
    connection = db.connection() if isinstance(db, Session) else db
    return _claim(connection, token, now or utcnow())


def consume_tokens(
    connection: Connection, tokens: list[str], now: dt.datetime | None = None
) -> list[ConsoleTarget | TokenRefused]:
    """consume_token for each of `tokens` in one transaction (the gateway's claims gathered while the
    previous ones ran: gateway/claims.py): a target or the refusal, in order, with the same reasons.

    A few statements whatever the number of tokens: one read of them all, one conditional UPDATE of those
    that may open (RETURNING the ones it claimed), and a read of the used times only when some lost a
    race. Each statement is a round trip to the database, and on the gateway's worker thread a hand-over
    of the interpreter's lock to and from its event loop. A refusal never leaves a write behind (every
    check that can refuse comes before the claim), so the others' claims stand whatever one token's
    answer is; the same token twice opens once.
    """
    now = now or utcnow()
    if len(tokens) == 1:
        # Alone, the token's own prebuilt statements cost less than the ones for many (an IN list
        # rendered at each run, RETURNING): a console opened by itself costs what it did.
        try:
            return [consume_token(connection, tokens[0], now)]
        except TokenRefused as refused:
            return [refused]
    answers: list[ConsoleTarget | TokenRefused | None] = [None] * len(tokens)
    digests: dict[str, int] = {}  # digest → index of its first occurrence
    for index, token in enumerate(tokens):
        if not TOKEN_SHAPE.match(token):
            answers[index] = TokenRefused("missing or malformed console token")
        else:
            digests.setdefault(hash_token(token), index)
    rows = {}
    if digests:
        rows = {
            row.token_hash: row for row in connection.execute(_TOKENS_WITH_STATE, {"digests": list(digests)})
        }
    candidates: dict[str, ConsoleTarget] = {}
    for digest, index in digests.items():
        try:
            candidates[digest] = _target(rows.get(digest), now)
        except TokenRefused as refused:
            answers[index] = refused
    if candidates:
        claimed = set(connection.scalars(_CLAIM_ALL, {"digests": list(candidates), "now": now}))
        lost = [digest for digest in candidates if digest not in claimed]
        used = dict(connection.execute(_USED_AT_ALL, {"digests": lost}).tuples().all()) if lost else {}
        for digest, target in candidates.items():
            if digest in claimed:
                answers[digests[digest]] = target
            else:
                reason = (
                    "console token already used" if used.get(digest) is not None else "console token expired"
                )
                answers[digests[digest]] = TokenRefused(reason)
    for index, token in enumerate(tokens):
        if answers[index] is None:  # a repeat of a token earlier in the list
            first = answers[digests[hash_token(token)]]
            answers[index] = (
                first if isinstance(first, TokenRefused) else TokenRefused("console token already used")
            )
    return answers  # type: ignore[return-value]


def _claim(connection: Connection, token: str, now: dt.datetime) -> ConsoleTarget:
    digest = hash_token(token)
    # One read brings the token with its session and desktop; an unknown, used or expired token, an ended
    # session, a stopped desktop are answered from it, so only a token that opens its console costs a
    # write (and a write lock: vdi bench tunnel). Statements are built once, with parameters, and run on
    # the connection: building and running them through the ORM cost more than SQLite itself.
    target = _target(connection.execute(_TOKEN_WITH_STATE, {"digest": digest}).one_or_none(), now)
    # The conditional UPDATE is the single-use guarantee: of two racing consumers exactly one
    # sees rowcount 1, on SQLite and PostgreSQL alike.
    if not connection.execute(_CLAIM, {"digest": digest, "now": now}).rowcount:
        used_at = connection.execute(_USED_AT, {"digest": digest}).scalar()
        raise TokenRefused("console token already used" if used_at is not None else "console token expired")
    return target


def _target(row: Any, now: dt.datetime) -> ConsoleTarget:
    """The target of a token's row as read, or why it cannot open anything (checked before any write)."""
    if row is None:
        raise TokenRefused("unknown console token")
    if row.used_at is not None:
        raise TokenRefused("console token already used")
    if row.expires_at <= now:
        raise TokenRefused("console token expired")
    if row.session_state is None or row.session_state == "ended":
        raise TokenRefused("session has ended")
    if row.desktop_state != "running":
        raise TokenRefused("desktop is not running")
    return _routed(
        ConsoleTarget(
            row.session_id,
            row.desktop_id,
            row.target_host,
            row.target_port,
            host_name=row.host_name,
            username=row.username,
            domain_name=row.domain_name,
            vnc_password_sealed=row.vnc_password_sealed,
            policy=ConsolePolicy.of(row.policy),
            pool_name=row.pool_name,
        ),
        row,
    )


_TOKEN_STATE = (
    select(
        ConsoleToken.token_hash,
        ConsoleToken.session_id,
        ConsoleToken.desktop_id,
        ConsoleToken.target_host,
        ConsoleToken.target_port,
        ConsoleToken.route,
        ConsoleToken.ssh_address,
        ConsoleToken.policy,
        ConsoleToken.used_at,
        ConsoleToken.expires_at,
        DesktopSession.state.label("session_state"),
        DesktopSession.username,
        Desktop.state.label("desktop_state"),
        Desktop.host_name,
        Desktop.domain_name,
        Desktop.vnc_password_sealed,
        Desktop.pool_name,
    )
    .outerjoin(DesktopSession, DesktopSession.id == ConsoleToken.session_id)
    .outerjoin(Desktop, Desktop.id == DesktopSession.desktop_id)
)
_TOKEN_WITH_STATE = _TOKEN_STATE.where(ConsoleToken.token_hash == bindparam("digest"))
_CLAIM = (
    update(ConsoleToken.__table__)
    .where(
        ConsoleToken.token_hash == bindparam("digest"),
        ConsoleToken.used_at.is_(None),
        ConsoleToken.expires_at > bindparam("now"),
    )
    .values(used_at=bindparam("now"))
)
_USED_AT = select(ConsoleToken.used_at).where(ConsoleToken.token_hash == bindparam("digest"))
# The same for many tokens at once (consume_tokens).
_TOKENS_WITH_STATE = _TOKEN_STATE.where(ConsoleToken.token_hash.in_(bindparam("digests", expanding=True)))
_CLAIM_ALL = (
    update(ConsoleToken.__table__)
    .where(
        ConsoleToken.token_hash.in_(bindparam("digests", expanding=True)),
        ConsoleToken.used_at.is_(None),
        ConsoleToken.expires_at > bindparam("now"),
    )
    .values(used_at=bindparam("now"))
    .returning(ConsoleToken.token_hash)
)
_USED_AT_ALL = select(ConsoleToken.token_hash, ConsoleToken.used_at).where(
    ConsoleToken.token_hash.in_(bindparam("digests", expanding=True))
)


def _routed(target: ConsoleTarget, row: Any) -> ConsoleTarget:
    """The route the broker decided when it issued the token (finding 3: never looked up again here)."""
    if row.route == "direct":
        return target
    if row.route == "ssh":
        return replace(target, route="ssh", ssh=_parse_ssh(row.ssh_address))
    # Issued before migration 0009 (they live 30 s): its route is unknown, so it opens nothing.
    raise TokenRefused("console token without a route; reconnect")


def _parse_ssh(address: str | None) -> SshAddress | None:
    try:
        return SshAddress.parse(address) if address else None
    except ValueError:
        return None


def purge_expired(db: Session, now: dt.datetime | None = None, keep_s: int = PURGE_AFTER_S) -> int:
    """Delete tokens that expired more than `keep_s` ago; how many."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=keep_s)
    return db.execute(delete(ConsoleToken).where(ConsoleToken.expires_at < cutoff)).rowcount
