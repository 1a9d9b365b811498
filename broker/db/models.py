"""Database models: desired state of pools, hosts, desktops, sessions and console tokens.

The gateway reads these models too (read and token consumption only); nothing else outside
the broker imports them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    insert,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no zone, so values come back naive; they were written as UTC, so say so.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    """Cache of a directory identity, refreshed at every login."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256), default="")
    groups: Mapped[list] = mapped_column(JSON, default=list)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class PortalSession(Base):
    """A logged-in browser or API client. The cookie carries the id; only its hash is stored."""

    __tablename__ = "portal_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("users.username"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Pool(Base):
    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(16), default="dedicated")
    image: Mapped[str] = mapped_column(String(128))
    groups: Mapped[list] = mapped_column(JSON, default=list)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    # Every setting of the pool (broker.config.PoolSettings as JSON, migration 0012): brokers share their
    # pools through the database; a config file only seeds an empty one (broker/pool_catalog.py).
    settings: Mapped[dict | None] = mapped_column(JSON)
    # Bumped by every change, so brokers notice a pool changed by another one.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Host(Base):
    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    uri: Mapped[str] = mapped_column(String(512))
    # Which desktop provider drives the host (migration 0008): a name in hypervisor's registry.
    provider: Mapped[str] = mapped_column(String(32), default="libvirt", server_default="libvirt")
    state: Mapped[str] = mapped_column(String(16), default="up")
    max_desktops: Mapped[int] = mapped_column(Integer, default=20)
    # Optimistic concurrency: every claim bumps the generation, a stale writer loses.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Host inventory (migration 0004): `state` above is health (up | down), `admin_state` is what
    # an administrator chose (enabled | disabled | draining); placement needs both to say yes.
    admin_state: Mapped[str] = mapped_column(String(16), default="enabled")
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    vcpus: Mapped[int | None] = mapped_column(Integer)  # physical, from override or capability query
    memory_mib: Mapped[int | None] = mapped_column(Integer)
    cpu_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    ram_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    images: Mapped[list] = mapped_column(JSON, default=list)  # image versions present on the host
    cpu_load: Mapped[float | None] = mapped_column(Float)  # last reported load, 0..1 per core
    # How the gateway reaches this host's desktop displays (migration 0005): "direct" TCP to the
    # address libvirt reports, or "ssh": a channel through the host's sshd to its loopback VNC.
    console_access: Mapped[str] = mapped_column(String(16), default="direct")
    ssh_address: Mapped[str | None] = mapped_column(String(255))  # user@host:port; unset: from the uri
    # Where the host's desktops' VNC servers listen (migration 0009): a direct route needs one the gateway reaches.
    vnc_listen: Mapped[str] = mapped_column(String(255), default="127.0.0.1", server_default="127.0.0.1")


class Desktop(Base):
    __tablename__ = "desktops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"), index=True)
    host_name: Mapped[str | None] = mapped_column(ForeignKey("hosts.name"), index=True)
    domain_name: Mapped[str] = mapped_column(String(128), unique=True)
    image: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="provisioning")
    assigned_user: Mapped[str | None] = mapped_column(ForeignKey("users.username"), index=True)
    vnc_host: Mapped[str | None] = mapped_column(String(255))
    vnc_port: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    error: Mapped[str | None] = mapped_column(Text)
    # What the desktop holds on its host (migration 0004); placement sums these per host.
    vcpus: Mapped[int | None] = mapped_column(Integer)
    memory_mib: Mapped[int | None] = mapped_column(Integer)
    # When the guest showed it had finished booting (migration 0007); a spare is handed out ready first.
    ready_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The VNC password of the desktop's display, sealed (broker/db/vnc_passwords.py; migration 0009).
    # None: a desktop made before credential injection, whose console the gateway relays as bytes.
    vnc_password_sealed: Mapped[str | None] = mapped_column(Text)


class DesktopSession(Base):
    """A user's use of a desktop, from connect to logoff.

    At most one live (active) session per user and pool, by a partial unique index (migration 0012): of
    two brokers taking a Connect of one user at once, one inserts and the other joins its session.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        Index(
            "uq_sessions_live_user_pool",
            "username",
            "pool_name",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("users.username"), index=True)
    desktop_id: Mapped[int] = mapped_column(ForeignKey("desktops.id"), index=True)
    # The desktop's pool, copied (migration 0012) so the unique index above can name it.
    pool_name: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default="active")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_input_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The smart work center the session was opened at (migration 0014; broker/attendance.py): None away.
    center: Mapped[str | None] = mapped_column(String(64), index=True)


class ConsoleToken(Base):
    """Single-use permission to open one console tunnel. Only the SHA-256 of the token is stored."""

    __tablename__ = "console_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    desktop_id: Mapped[int] = mapped_column(ForeignKey("desktops.id"))
    target_host: Mapped[str] = mapped_column(String(255))
    target_port: Mapped[int] = mapped_column(Integer)
    # The route decided at issue (migration 0009): "direct" TCP to target_host, or "ssh" through ssh_address.
    route: Mapped[str | None] = mapped_column(String(16))
    ssh_address: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The pool's console policy (clipboard) when the token was issued (migration 0009); None: no limits.
    policy: Mapped[dict | None] = mapped_column(JSON)


class AuditEvent(Base):
    """Append-only record of who did what; never holds secrets."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    result: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(256), default="")
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


def insert_audit_event(db: Session, **columns: object) -> None:
    """An AuditEvent row as a plain INSERT, for the logon path: no ORM instance to track and flush at
    commit (docs/ha.md). Columns left out take the model's defaults, as they would in a flush."""
    db.execute(insert(AuditEvent.__table__).values(**columns))


class Image(Base):
    """A golden image: a name pools refer to, with its versions."""

    __tablename__ = "images"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    os: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ImageVersion(Base):
    """One built or imported qcow2 of an image. Immutable once registered: a new build is a new version."""

    __tablename__ = "image_versions"
    __table_args__ = (UniqueConstraint("image_name", "version", name="uq_image_versions_image_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_name: Mapped[str] = mapped_column(ForeignKey("images.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    virtual_size_bytes: Mapped[int] = mapped_column(BigInteger)
    os: Mapped[str] = mapped_column(String(64), default="")
    build_log: Mapped[str | None] = mapped_column(String(1024))
    # Direct kernel boot (images built here have no boot loader); empty for images that boot from disk.
    kernel: Mapped[str | None] = mapped_column(String(1024))
    initrd: Mapped[str | None] = mapped_column(String(1024))
    cmdline: Mapped[str] = mapped_column(String(512), default="")
    built_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    immutable: Mapped[bool] = mapped_column(Boolean, default=True)


class LoginThrottle(Base):
    """Failed logins of one user name or one source address in the current window (lockout).

    In the database, not in memory, so every broker process counts the same failures.
    """

    __tablename__ = "login_throttles"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "user" or "source"
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class TotpCredential(Base):
    """A user's TOTP secret, encrypted at rest, and the last time step used (replay protection)."""

    __tablename__ = "totp_credentials"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_used_step: Mapped[int | None] = mapped_column(Integer)


class PendingLogin(Base):
    """A password login waiting for its TOTP code: not yet a portal session. Only the id's hash is stored."""

    __tablename__ = "pending_logins"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), index=True)
    display_name: Mapped[str] = mapped_column(String(256), default="")
    groups: Mapped[list] = mapped_column(JSON, default=list)
    method: Mapped[str] = mapped_column(String(32))
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ConsoleCutoff(Base):
    """Why a desktop session's console was cut off (sign-out everywhere, an administrator); gateways close
    its tunnels when they see the row."""

    __tablename__ = "console_cutoffs"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    revoked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(String(64))


class Rollout(Base):
    """Moving a pool to another image version: canary desktops first, then promoted or rolled back.

    States: pending → creating → canary → promoted | rolled_back (broker/rollout.py, migration 0006).
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"), index=True)
    image_name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    from_image: Mapped[str] = mapped_column(String(128), default="")  # "name:version" before the rollout
    state: Mapped[str] = mapped_column(String(16), default="pending")
    canary: Mapped[str] = mapped_column(String(8))  # as asked: "1" or "20%"
    canary_count: Mapped[int] = mapped_column(Integer)
    canaries: Mapped[list] = mapped_column(JSON, default=list)  # domain names of the canary desktops
    deadline_s: Mapped[int] = mapped_column(Integer)
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deadline_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """One broker's right to run one background job until `expires_at` (migration 0011, broker/leases.py)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Center(Base):
    """A smart work center (site): where its terminals are, when it is open, how many seats per zone
    (migration 0014, broker/centers.py)."""

    __tablename__ = "centers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    name_ko: Mapped[str] = mapped_column(String(128))
    name_en: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(512), default="")
    time_zone: Mapped[str] = mapped_column(String(64), default="Asia/Seoul")
    # {"mon": "09:00-18:00", …}; a weekday not named is a closed day.
    opening_hours: Mapped[dict] = mapped_column(JSON, default=dict)
    # [{"cidr": "10.1.0.0/24", "zone": "business"}, …]: the networks of the center's terminals.
    networks: Mapped[list] = mapped_column(JSON, default=list)
    seats: Mapped[dict] = mapped_column(JSON, default=dict)  # {"business": 20, "internet": 4}
    booking_policy: Mapped[str] = mapped_column(String(16), default="walk_in")  # walk_in | require_booking
    walk_in_minutes: Mapped[int] = mapped_column(Integer, default=120)
    # A login from an unregistered device on a terminal network: allow | limit (no walk-in seat) | refuse.
    unregistered_terminals: Mapped[str] = mapped_column(String(16), default="allow", server_default="allow")
    kiosk_idle_s: Mapped[int] = mapped_column(Integer, default=600, server_default="600")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SeatReservation(Base):
    """A user's seat at a center for a time range; booked ahead on the portal, or at a walk-in login."""

    __tablename__ = "seat_reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    center: Mapped[str] = mapped_column(ForeignKey("centers.name"), index=True)
    zone: Mapped[str] = mapped_column(String(16))
    seat: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(128), index=True)
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16), default="booked")  # booked | cancelled
    kind: Mapped[str] = mapped_column(String(16), default="booking")  # booking | walk_in
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class SeatSlot(Base):
    """One seat for one slot of time, held by one reservation.

    The primary key is the guarantee against double booking: two bookings of the same seat and slot
    cannot both commit, on SQLite and PostgreSQL alike, however many brokers race (broker/reservations.py).
    """

    __tablename__ = "seat_slots"

    center: Mapped[str] = mapped_column(ForeignKey("centers.name"), primary_key=True)
    zone: Mapped[str] = mapped_column(String(16), primary_key=True)
    seat: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_start: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)
    reservation_id: Mapped[int] = mapped_column(
        ForeignKey("seat_reservations.id", ondelete="CASCADE"), index=True
    )


class AttendanceCorrection(Base):
    """An administrator's correction of one user's day at one center (broker/attendance.py): it replaces
    the check-in and check-out derived from sessions. Audited with its reason."""

    __tablename__ = "attendance_corrections"
    __table_args__ = (UniqueConstraint("username", "center", "day", name="uq_attendance_corrections_day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128))
    center: Mapped[str] = mapped_column(ForeignKey("centers.name"), index=True)
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD in the center's time zone
    checked_in_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    checked_out_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(String(512))
    actor: Mapped[str] = mapped_column(String(128))
    corrected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Terminal(Base):
    """A registered shared terminal of a center: known by its device certificate or by its address."""

    __tablename__ = "terminals"
    __table_args__ = (UniqueConstraint("center", "name", name="uq_terminals_center_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    center: Mapped[str] = mapped_column(ForeignKey("centers.name"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64), unique=True)
    cert_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)  # of the certificate's DER
    cert_subject: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TransferRequest(Base):
    """A file or text a user asks to move from one network zone's desktop to the other's (망연계):
    pending → approved → delivered, or rejected or blocked by the scan (broker/transfers.py)."""

    __tablename__ = "transfer_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), index=True)
    from_zone: Mapped[str] = mapped_column(String(16))
    to_zone: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))  # text | file
    filename: Mapped[str] = mapped_column(String(255), default="")
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    # Held until delivered, rejected or blocked; then emptied, so nothing lingers between zones.
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(String(512))
    groups: Mapped[list] = mapped_column(JSON, default=list)  # the requester's groups when asked
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    scan_result: Mapped[str] = mapped_column(String(32), default="")
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    decision_note: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
