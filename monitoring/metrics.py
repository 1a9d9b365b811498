"""Every Prometheus metric of smartwork-vdi, declared in one place.

Names follow <noun>_<verb>_<unit>. Label values are Enums so that each series exists at zero
from the start and no free-form (possibly secret) text becomes a label.
"""

from __future__ import annotations

from enum import Enum

from prometheus_client import Counter, Gauge, Histogram


class LoginMethod(Enum):
    """The built-in login methods; further ones add their series through `declare_login_method`
    when sso/methods.py registers them (their names are fixed by code, never taken from requests)."""

    PASSWORD = "password"
    CERTIFICATE = "certificate"


class LoginResult(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


class ConnectResult(Enum):
    SUCCESS = "success"
    FORBIDDEN = "forbidden"
    NO_CAPACITY = "no_capacity"
    HYPERVISOR_ERROR = "hypervisor_error"


class TunnelRefusal(Enum):
    TOKEN = "token"
    ORIGIN = "origin"
    UPSTREAM = "upstream"
    UPSTREAM_SSH = "upstream_ssh"  # the display's host refused or failed the SSH route
    LIMIT = "limit"  # the session already has gateway.max_tunnels_per_session tunnels open
    # The RFB layer (gateway/rfb.py): a handshake or message the gateway refuses, during or after opening.
    RFB_MALFORMED = "rfb_malformed"  # a message that breaks RFC 6143 framing
    RFB_OVERSIZED = "rfb_oversized"  # a message over gateway.max_message_bytes
    RFB_UNSUPPORTED = "rfb_unsupported"  # a message type, version or encoding the gateway does not relay
    RFB_TIMEOUT = "rfb_timeout"  # the desktop or the browser did not finish its RFB handshake in time
    DESKTOP_AUTH = "desktop_auth"  # the desktop refused the VNC password, or asks for no known security
    NO_KEY = "no_key"  # the desktop has a sealed password the gateway cannot open (vnc_password_key)
    RECORDING = "recording"  # the pool requires recording and it could not start or stopped


class ClipboardResult(Enum):
    BLOCKED = "blocked"  # not forwarded: the pool's policy, too large, or not text
    TRUNCATED = "truncated"  # forwarded shortened, or with formats removed


class TokenRefusal(Enum):
    RATE = "rate"  # the user minted broker.console_tokens_per_minute already


class Direction(Enum):
    CLIENT_TO_DESKTOP = "client_to_desktop"
    DESKTOP_TO_CLIENT = "desktop_to_client"


LOGINS = Counter("vdi_logins_total", "Portal logins by method and result", ["method", "result"])
CONNECT_DURATION = Histogram(
    "vdi_connect_duration_seconds",
    "Time from a connect request to a console being ready, by result",
    ["result"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
SESSIONS_ACTIVE = Gauge("vdi_sessions_active", "Desktop sessions not yet logged off")
DATABASE_UNAVAILABLE_REFUSALS = Counter(
    "vdi_database_unavailable_refusals_total",
    "Requests the broker answered 503 because the database could not be reached (degraded mode)",
)
CONFIG_FILE_DISAGREEMENTS = Gauge(
    "vdi_config_file_disagreements",
    "Settings (pools, hosts) in this broker's configuration file that differ from the database's at start; "
    "the database wins",
)
CONNECTS_JOINED = Counter(
    "vdi_connects_joined_total",
    "Connects that found the user's session in the pool opened meanwhile (by another broker) and joined it",
)
DESKTOPS_STARTED = Counter("vdi_desktops_started_total", "Desktops started on a hypervisor host")
DESKTOP_START_FAILURES = Counter(
    "vdi_desktop_start_failures_total", "Desktop starts that failed and were rolled back"
)
CONSOLE_TOKENS_ISSUED = Counter("vdi_console_tokens_issued_total", "Console tokens handed to clients")
CONSOLE_TOKENS_REFUSED = Counter(
    "vdi_console_tokens_refused_total", "Console tokens the broker would not mint, by reason", ["reason"]
)
CONSOLE_TOKENS_PURGED = Counter(
    "vdi_console_tokens_purged_total", "Expired console tokens removed from the database by the broker"
)

TUNNELS_OPEN = Gauge("vdi_gateway_tunnels_open", "Console tunnels currently relaying")
TUNNELS_REFUSED = Counter(
    "vdi_gateway_tunnels_refused_total", "Console tunnels refused, by reason", ["reason"]
)
BYTES_RELAYED = Counter("vdi_gateway_bytes_relayed_total", "Bytes relayed through the gateway", ["direction"])
CLIPBOARD_TRANSFERS_STOPPED = Counter(
    "vdi_gateway_clipboard_transfers_stopped_total",
    "Clipboard transfers the console policy blocked or cut, by direction and result (each one audited)",
    ["direction", "result"],
)


class RecordingFailure(Enum):
    """Why a console recording did not start or stopped early (gateway/recorder.py)."""

    DISK_FULL = "disk_full"  # less than gateway.recording_min_free_mb free, or the disk filled up
    WRITE_ERROR = "write_error"  # the recordings directory could not be written
    BACKLOG = "backlog"  # the writer fell gateway.recording_backlog_mb behind the relay
    UNFRAMED = "unframed"  # a desktop without a VNC password: the byte relay has no ServerInit to record


RECORDINGS_ACTIVE = Gauge("vdi_gateway_recordings_active", "Console recordings being written")
RECORDING_BYTES_WRITTEN = Counter(
    "vdi_gateway_recording_bytes_written_total", "Compressed bytes of console recordings written to disk"
)
RECORDING_SEGMENTS = Counter(
    "vdi_gateway_recording_segments_total", "Console recording segment files completed"
)
RECORDING_FAILURES = Counter(
    "vdi_gateway_recording_failures_total",
    "Console recordings that failed to start or stopped early",
    ["reason"],
)
RECORDINGS_PURGED = Counter(
    "vdi_gateway_recordings_purged_total", "Console recordings removed after gateway.recording_retention_days"
)


def declare_login_method(method: str) -> None:
    """Series of a login method at zero, so that its rate is 0 rather than absent before its first login."""
    for result in LoginResult:
        LOGINS.labels(method=method, result=result.value)


def _zero_series() -> None:
    for method in LoginMethod:
        declare_login_method(method.value)
    for connect in ConnectResult:
        CONNECT_DURATION.labels(result=connect.value)
    for refusal in TunnelRefusal:
        TUNNELS_REFUSED.labels(reason=refusal.value)
    for token_refusal in TokenRefusal:
        CONSOLE_TOKENS_REFUSED.labels(reason=token_refusal.value)
    for direction in Direction:
        BYTES_RELAYED.labels(direction=direction.value)
        for clipboard in ClipboardResult:
            CLIPBOARD_TRANSFERS_STOPPED.labels(direction=direction.value, result=clipboard.value)
    for failure in RecordingFailure:
        RECORDING_FAILURES.labels(reason=failure.value)


class PlacementResult(Enum):
    PLACED = "placed"
    NO_HOST = "no_host"


class PlacementReason(Enum):
    """The filter that removed the last hosts ("none" when a host was chosen)."""

    NONE = "none"
    NO_HOSTS = "no_hosts"
    HOST_STATE = "host_state"
    LABELS = "labels"
    ANTI_AFFINITY = "anti_affinity"
    CAPACITY = "capacity"
    OTHER = "other"


class ClaimConflict(Enum):
    GENERATION = "generation"  # another request claimed the host since we read it
    CAPACITY = "capacity"  # the re-check in the claim transaction found the host full
    BUSY = "busy"  # another transaction (another broker) was claiming the host at that moment
    CHANGED = "changed"  # the host as the claim found it no longer passes the filters (down, relabelled)


class HostHealth(Enum):
    UP = "up"
    DOWN = "down"


class HostAdminState(Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DRAINING = "draining"


PLACEMENT_DURATION = Histogram(
    "vdi_placement_duration_seconds",
    "Time the placement engine takes to filter and weigh hosts for one decision",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
PLACEMENTS = Counter(
    "vdi_placements_total",
    "Placement decisions by result and by the filter that left no host",
    ["result", "reason"],
)
PLACEMENT_CLAIM_CONFLICTS = Counter(
    "vdi_placement_claim_conflicts_total", "Host claims lost to concurrent requests, by kind", ["kind"]
)
PLACEMENT_RETRIES = Counter("vdi_placement_retries_total", "Placements tried again after a lost claim")
HOSTS = Gauge(
    "vdi_hosts", "Hypervisor hosts in the inventory by health and admin state", ["health", "admin_state"]
)


def _zero_placement_series() -> None:
    for result in PlacementResult:
        for reason in PlacementReason:
            PLACEMENTS.labels(result=result.value, reason=reason.value)
    for conflict in ClaimConflict:
        PLACEMENT_CLAIM_CONFLICTS.labels(kind=conflict.value)
    for health in HostHealth:
        for admin_state in HostAdminState:
            HOSTS.labels(health=health.value, admin_state=admin_state.value)


_zero_series()
_zero_placement_series()


# -- login security: lockout, TOTP, single sign-out --------------------------------------------------


class LockoutKind(Enum):
    USER = "user"
    SOURCE = "source"


class TotpResult(Enum):
    SUCCESS = "success"
    INVALID = "invalid"
    REPLAYED = "replayed"
    EXPIRED = "expired"


class BackgroundJob(Enum):
    """The broker's background jobs, each run by exactly one broker at a time (broker/leases.py)."""

    POOL_MANAGER = "pool-manager"
    SESSION_LIFECYCLE = "session-lifecycle"
    POWER_MANAGER = "power-manager"
    ROLLOUT_MANAGER = "rollout-manager"
    TOKEN_PURGE = "console-token-purge"
    HOST_MONITOR = "host-monitor"
    SEAT_ENDS = "seat-ends"


class LeaseChange(Enum):
    ACQUIRED = "acquired"
    LOST = "lost"


LEASES_HELD = Gauge("vdi_background_leases_held", "1 where this broker runs the background job now", ["job"])
LEASE_CHANGES = Counter(
    "vdi_background_lease_changes_total",
    "Background jobs this broker took over or gave up",
    ["job", "change"],
)


def _zero_lease_series() -> None:
    for job in BackgroundJob:
        LEASES_HELD.labels(job=job.value)
        for change in LeaseChange:
            LEASE_CHANGES.labels(job=job.value, change=change.value)


_zero_lease_series()


class SignOutCause(Enum):
    LOGOUT = "logout"
    ADMIN = "admin"
    SEAT_ENDED = "seat_ended"  # a center seat's booking ended (broker/seat_ends.py)


class ForwardedForIgnored(Enum):
    UNTRUSTED_PEER = "untrusted_peer"  # sent by a client that is not in broker.trusted_proxies
    MALFORMED = "malformed"  # sent by a trusted proxy, but not a list of addresses


LOCKOUTS = Counter(
    "vdi_login_lockouts_total", "User names or source addresses locked after failed logins", ["kind"]
)
TOTP_VERIFICATIONS = Counter("vdi_totp_verifications_total", "TOTP codes checked, by result", ["result"])
TOTP_RESETS = Counter(
    "vdi_totp_resets_total",
    "TOTP enrolments removed by an administrator through the broker's API (lost phone)",
)
SESSIONS_REVOKED = Counter(
    "vdi_sessions_revoked_total", "Portal and desktop sessions ended by sign-out or revoke", ["cause"]
)
TUNNELS_CLOSED_REVOKED = Counter(
    "vdi_gateway_tunnels_closed_revoked_total", "Console tunnels closed because their session was ended"
)
FORWARDED_FOR_IGNORED = Counter(
    "vdi_forwarded_for_ignored_total",
    "X-Forwarded-For headers the broker did not believe, by why",
    ["reason"],
)


def _zero_login_security_series() -> None:
    for kind in LockoutKind:
        LOCKOUTS.labels(kind=kind.value)
    for result in TotpResult:
        TOTP_VERIFICATIONS.labels(result=result.value)
    for cause in SignOutCause:
        SESSIONS_REVOKED.labels(cause=cause.value)
    for reason in ForwardedForIgnored:
        FORWARDED_FOR_IGNORED.labels(reason=reason.value)


_zero_login_security_series()


class CertificateLoginOutcome(Enum):
    SUCCESS = "success"
    # Revocation unknown, allowed because fail_mode is "open" (audited apart from plain successes).
    SUCCESS_FAIL_OPEN = "success_fail_open"
    INVALID = "invalid"
    REVOKED = "revoked"
    REVOCATION_UNAVAILABLE = "revocation_unavailable"
    NO_USER = "no_user"
    DIRECTORY_ERROR = "directory_error"
    # Refused by OpenSSL during the portal's TLS handshake (broker/web/tls.py): untrusted, expired, not clientAuth.
    REFUSED_IN_HANDSHAKE = "refused_in_handshake"


class RevocationSource(Enum):
    OCSP = "ocsp"
    CRL = "crl"
    NONE = "none"


class RevocationResult(Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    ERROR = "error"


CERTIFICATE_LOGINS = Counter("vdi_certificate_logins_total", "Certificate logins by outcome", ["outcome"])
REVOCATION_CHECKS = Counter(
    "vdi_certificate_revocation_checks_total", "Revocation checks by source and result", ["source", "result"]
)


def _zero_certificate_series() -> None:
    for outcome in CertificateLoginOutcome:
        CERTIFICATE_LOGINS.labels(outcome=outcome.value)
    for source in RevocationSource:
        for result in RevocationResult:
            REVOCATION_CHECKS.labels(source=source.value, result=result.value)


_zero_certificate_series()


class ImageCopy(Enum):
    """Where a golden image version's bytes were checked against the catalog's SHA-256."""

    STORE = "store"  # the broker's copy, before upload
    HOST = "host"  # the base volume on a hypervisor host, after upload


class ChecksumResult(Enum):
    MATCH = "match"
    MISMATCH = "mismatch"


IMAGE_CHECKSUM_VERIFICATIONS = Counter(
    "vdi_image_checksum_verifications_total",
    "Golden image copies checked against the catalog's SHA-256, by copy and result",
    ["copy", "result"],
)


def _zero_image_series() -> None:
    for copy in ImageCopy:
        for result in ChecksumResult:
            IMAGE_CHECKSUM_VERIFICATIONS.labels(copy=copy.value, result=result.value)


_zero_image_series()


# -- host monitor and reconcile ----------------------------------------------------------------------


class OrphanAction(Enum):
    REPORTED = "reported"
    DESTROYED = "destroyed"


class ReconcileFix(Enum):
    LOST = "lost"  # the database said running; the host has no such domain
    ADOPTED = "adopted"  # the database said provisioning (a broker died mid-start); the domain runs
    ENDED = "ended"  # a session ended on its host (the user logged out): removed and its slot freed


HOST_DOWN_TRANSITIONS = Counter(
    "vdi_host_down_transitions_total", "Times a hypervisor host was marked down by the monitor"
)
DESKTOPS_LOST = Counter(
    "vdi_desktops_lost_total", "Desktops marked lost because their host went down or their guest crashed"
)
DESKTOP_CLONE_DURATION = Histogram(
    "vdi_desktop_clone_duration_seconds",
    "Time to make a desktop's linked clone (qcow2 overlay volume over the golden image) on its host",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DESKTOP_BOOT_DURATION = Histogram(
    "vdi_desktop_boot_duration_seconds",
    "Time from starting a desktop's domain until its display listens, by virtualisation (kvm or qemu)",
    ["virt_type"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
)
DESKTOP_GUEST_READY_DURATION = Histogram(
    "vdi_desktop_guest_ready_seconds",
    "Time from creating a spare desktop until its guest showed it had finished booting (console ready marker)",
    buckets=(1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300),
)
SPARES_NOT_READY = Counter(
    "vdi_spares_not_ready_total",
    "Spares whose guest crashed while booting (replaced) or did not show ready by the deadline (handed out anyway)",
    ["outcome"],
)
DOMAIN_EVENTS = Counter(
    "vdi_domain_events_total",
    "Lifecycle events hosts reported for domains (started, stopped, crashed, ...)",
    ["event"],
)
ORPHAN_DOMAINS = Counter(
    "vdi_orphan_domains_total",
    "Domains of ours on a host that the database does not know, by action",
    ["action"],
)
RECONCILE_FIXES = Counter(
    "vdi_reconcile_fixes_total", "Desktop rows reconcile changed to match the hypervisor, by fix", ["fix"]
)


def _zero_monitor_series() -> None:
    for action in OrphanAction:
        ORPHAN_DOMAINS.labels(action=action.value)
    for fix in ReconcileFix:
        RECONCILE_FIXES.labels(fix=fix.value)


_zero_monitor_series()


class PoolDesktops(Enum):
    TOTAL = "total"  # every desktop the pool holds (provisioning or running), canaries on trial too
    SPARE = "spare"  # unassigned and takeable by a connect (booting or ready); never a canary on trial
    SPARE_READY = "spare_ready"  # of those, the ones whose guest has shown it finished booting
    IN_USE = "in_use"  # with an active session


# Pool names come from the configuration (never user input); the pool manager creates each
# configured pool's series at zero when it starts.
POOL_DESKTOPS = Gauge("vdi_pool_desktops", "Desktops of each pool by use", ["pool", "use"])


class SshChannelResult(Enum):
    """Outcome of opening an SSH channel to a desktop's display (gateway/ssh_channel.py)."""

    SUCCESS = "success"
    NOT_CONFIGURED = "not_configured"  # no key file, known_hosts file or SSH address
    UNREACHABLE = "unreachable"  # TCP connect, SSH handshake or timeout
    HOST_KEY_UNKNOWN = "host_key_unknown"
    HOST_KEY_MISMATCH = "host_key_mismatch"
    AUTH_FAILED = "auth_failed"
    CHANNEL_REFUSED = "channel_refused"  # sshd would not forward to the display (nothing listening, policy)


class HostKeyRefusal(Enum):
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"


SSH_TRANSPORTS_OPEN = Gauge("vdi_gateway_ssh_transports_open", "SSH connections from the gateway to hosts")
SSH_TRANSPORTS_OPENED = Counter(
    "vdi_gateway_ssh_transports_opened_total",
    "SSH connections the gateway made to hosts (reuse keeps this low)",
)
SSH_CHANNEL_OPENS = Counter(
    "vdi_gateway_ssh_channel_opens_total", "SSH channels to desktop displays opened, by result", ["result"]
)
SSH_HOST_KEY_REFUSALS = Counter(
    "vdi_gateway_ssh_host_key_refusals_total",
    "SSH connections refused because the host key was unknown or did not match known_hosts",
    ["reason"],
)


def _zero_ssh_series() -> None:
    for result in SshChannelResult:
        SSH_CHANNEL_OPENS.labels(result=result.value)
    for refusal in HostKeyRefusal:
        SSH_HOST_KEY_REFUSALS.labels(reason=refusal.value)


_zero_ssh_series()


# -- power policy of dedicated pools (broker/power.py) -----------------------------------------------


class PowerState(Enum):
    """Power state of a pool's assigned desktops, as the broker last recorded it."""

    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"


class PowerAction(Enum):
    STOP = "stop"
    SUSPEND = "suspend"
    START = "start"
    RESUME = "resume"


class PowerResult(Enum):
    SUCCESS = "success"
    ERROR = "error"


# Series per configured pool are created at zero by the power manager when it starts.
DESKTOPS_BY_POWER = Gauge(
    "vdi_pool_desktops_power", "Assigned desktops of each pool by power state", ["pool", "state"]
)
POWER_ACTION_DURATION = Histogram(
    "vdi_desktop_power_action_duration_seconds",
    "Time a power action on a desktop took on its host, by action and result",
    ["action", "result"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)


def _zero_power_series() -> None:
    for action in PowerAction:
        for result in PowerResult:
            POWER_ACTION_DURATION.labels(action=action.value, result=result.value)


_zero_power_series()


# -- image rollouts (broker/rollout.py) and pool size checks ------------------------------------------


class RolloutState(Enum):
    """Where a pool's newest rollout stands; NONE when the pool never had one."""

    NONE = "none"
    PENDING = "pending"  # asked for; no broker has started its canaries yet
    CREATING = "creating"  # canary desktops being placed and booted
    CANARY = "canary"  # canaries booted; waiting for their screens and ready markers
    ROLLING_BACK = "rolling_back"  # a canary failed; its desktops are being removed
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class RolloutResult(Enum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


# One-hot per configured pool (1 for the newest rollout's state); the rollout manager creates each
# configured pool's series when it starts. Pool names come from the configuration, never user input.
POOL_ROLLOUT_STATE = Gauge(
    "vdi_pool_rollout_state",
    "State of each pool's newest image rollout (1 for the current state)",
    ["pool", "state"],
)
ROLLOUTS_FINISHED = Counter("vdi_rollouts_total", "Image rollouts finished, by result", ["result"])
CANARY_READY_SECONDS = Histogram(
    "vdi_rollout_canary_ready_seconds",
    "Time from a rollout's start until all its canary desktops showed ready",
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
POOL_CAPACITY_SHORTFALL = Gauge(
    "vdi_pool_capacity_shortfall",
    "Desktops a pool wants (min_size or spares) beyond what every host matching it could hold",
    ["pool"],
)


def _zero_rollout_series() -> None:
    for result in RolloutResult:
        ROLLOUTS_FINISHED.labels(result=result.value)


_zero_rollout_series()


# -- smart work centers (broker/centers.py, broker/reservations.py) ----------------------------------


class SeatBookingResult(Enum):
    BOOKED = "booked"  # booked ahead on the portal or through the API
    WALK_IN = "walk_in"  # a free seat given at a login without a booking
    CANCELLED = "cancelled"
    FULL = "full"  # refused: no seat of the zone free for the whole range
    RACE_LOST = "race_lost"  # a writer outside the center lock took the chosen seat; tried again


class CenterLoginRefusal(Enum):
    NO_FREE_SEAT = "no_free_seat"  # walk-in policy, but every seat of the zone is taken now
    BOOKING_REQUIRED = "booking_required"  # the center's policy asks for a booking
    CLOSED = "closed"  # outside the center's opening hours
    UNREGISTERED_TERMINAL = "unregistered_terminal"  # a device the center's policy does not admit
    TERMINAL_CERTIFICATE_REFUSED = "terminal_certificate_refused"  # a terminal's certificate is revoked


class TransferOutcome(Enum):
    REQUESTED = "requested"  # waiting for an approver
    BLOCKED = "blocked"  # the scanning hook found it infected, or failed
    APPROVED = "approved"
    REJECTED = "rejected"
    DELIVERED = "delivered"


SEAT_BOOKINGS = Counter("vdi_seat_bookings_total", "Seat reservations at centers, by result", ["result"])
CENTER_LOGINS_REFUSED = Counter(
    "vdi_center_logins_refused_total", "Logins at center terminals refused for want of a seat", ["reason"]
)
CENTER_CHECK_INS = Counter(
    "vdi_center_check_ins_total", "First sessions of a user's day at a center (attendance check-ins)"
)

TRANSFERS = Counter(
    "vdi_zone_transfers_total", "Transfer requests between network zones (망연계), by outcome", ["outcome"]
)


def _zero_center_series() -> None:
    for outcome in TransferOutcome:
        TRANSFERS.labels(outcome=outcome.value)
    for result in SeatBookingResult:
        SEAT_BOOKINGS.labels(result=result.value)
    for reason in CenterLoginRefusal:
        CENTER_LOGINS_REFUSED.labels(reason=reason.value)


_zero_center_series()
