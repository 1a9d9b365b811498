"""Settings of the broker: its web application, desktop pools, and the whole of what a broker reads.

`BrokerConfig` holds every section the broker uses and nothing else (no gateway or lab settings);
`vdi/config.py` composes it with the other processes' sections into the configuration file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator

from broker.db.config import DatabaseSettings
from broker.placement.config import PlacementSettings
from hypervisor.config import HostSettings, check_direct_display
from images.config import DEFAULT_IMAGE, ImageSettings
from monitoring.access import MetricsAccessSettings
from sso import methods
from sso.config import CertificateSettings, LdapSettings, LockoutSettings, TotpSettings


class BrokerSettings(MetricsAccessSettings):
    model_config = ConfigDict(extra="forbid")

    listen_address: str = Field("127.0.0.1", description="address the portal and API listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the portal and API")
    cookie_secret: SecretStr = Field(min_length=32, description="key that signs portal session cookies")
    gateway_url: str = Field(
        "ws://127.0.0.1:8081/ws",
        pattern=r"^wss?://",
        description="WebSocket URL browsers use to reach the gateway",
    )
    session_lifetime_s: int = Field(8 * 3600, ge=60, description="portal login lifetime")
    console_token_ttl_s: int = Field(
        30, ge=1, le=30, description="lifetime of a console token (at most 30 s)"
    )
    default_language: str = Field(
        "ko", pattern=r"^(ko|en)$", description="portal language when the browser states none"
    )
    admin_groups: list[str] = Field(
        default_factory=list, description="directory groups whose members may use the admin API"
    )
    recording_dir: Path | None = Field(
        None,
        description="where the gateways write console recordings (their gateway.recording_dir, shared or "
        "the same machine), for the administrators' player; unset: the player lists none",
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (and chain) to serve the portal over HTTPS"
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CAs whose client certificates the TLS layer asks for (optional: password users "
        "on the same port send none); set for certificate login without a TLS-terminating proxy",
    )
    lease_ttl_s: float = Field(
        10.0,
        ge=1,
        le=60,
        description="of several brokers on one database, one runs each background job under a lease this "
        "long, renewed every third of it; a dead broker's jobs move to another within about 1.3 times this",
    )
    console_tokens_per_minute: int = Field(
        30,
        ge=1,
        le=6000,
        description="console tokens one user may mint per minute (more: 429 with Retry-After)",
    )
    max_body_bytes: int = Field(
        65536,
        ge=1024,
        le=16 * 1024 * 1024,
        description="largest request body accepted (the API takes small JSON; images are imported with "
        "`vdi image import`); a larger one is refused before it is read",
    )
    header_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a connection that sends no complete request headers for this long is closed",
    )
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="time allowed to receive a request body")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="addresses/CIDRs of reverse proxies whose X-Forwarded-For header names the client "
        "(lockout, TOTP center networks, audit); the header from any other address is ignored",
    )
    vnc_password_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="key that seals each desktop's VNC password at rest; the gateway's "
        "gateway.vnc_password_key must be the same (unset: new desktops get no VNC password and their "
        "displays are open to anyone on the host's loopback)",
    )
    login_methods: list[str] | None = Field(
        None,
        min_length=1,
        description="login methods the portal and API offer, by name (password, certificate, or one a "
        "plugin registers in sso/methods.py); unset: password, and certificate when [certificate] is enabled",
    )

    @field_validator("login_methods")
    @classmethod
    def _methods_known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else methods.check_names(value)

    @model_validator(mode="after")
    def _tls_pair(self) -> BrokerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_key: tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca: needs tls_cert and tls_key")
        return self


# Pools whose desktops are sessions on session hosts (SBC), not VMs: no image, no spares.
SESSION_KINDS = ("session", "app")


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    display_name: str = Field(description="name users see on the portal")
    image: str = Field(
        DEFAULT_IMAGE, description="name of the golden image the pool's desktops are cloned from"
    )
    image_version: str | None = Field(
        None,
        description="catalog version of `image` new desktops start from until a rollout promotes another; "
        "unset: a built-in image's files as found (images/built_in.py), else the image's newest "
        "catalog version",
    )
    groups: list[str] = Field(min_length=1, description="directory groups entitled to the pool")
    memory_mib: int = Field(256, ge=64, le=1024 * 1024, description="memory of each desktop")
    vcpus: int = Field(1, ge=1, le=256, description="virtual CPUs of each desktop")
    zone: Literal["business", "internet"] | None = Field(
        None,
        description="network zone of the pool: business (행정망) or internet (인터넷망); set, desktops go only "
        "on hosts labelled with it; unset, the pool is business and its desktops go on hosts labelled "
        "business or carrying no zone label; never on a host of the other zone (docs/centers.md)",
    )
    cross_zone_clipboard: bool = Field(
        False,
        description="allow the clipboard of a console opened from a center terminal on the other network "
        "zone (blocked by default: nothing is copied between zones; use a transfer request instead)",
    )
    site: str | None = Field(None, description="place desktops only on hosts labelled with this site")
    required_labels: dict[str, str] = Field(
        default_factory=dict, description="host labels a host must carry to take the pool's desktops"
    )
    max_per_host: int | None = Field(
        None, ge=1, description="anti-affinity: at most this many of the pool's desktops on one host"
    )
    kind: Literal["dedicated", "floating", "session", "app"] = Field(
        "floating",
        description="dedicated: a user keeps one desktop across logoffs; floating: logoff destroys it; "
        "session: a desktop session on a session host (SBC), logoff ends it; app: one published application "
        "on a session host, the session ends with it",
    )
    session_command: list[str] | None = Field(
        None,
        min_length=1,
        description="kind session: the desktop session started in the user's display, as an argument list "
        '(unset: openbox-session), e.g. ["startxfce4"]',
    )
    app_command: list[str] | None = Field(
        None,
        min_length=1,
        description='kind app (required): the published application as an argument list, e.g. ["mousepad"]',
    )
    window_manager: list[str] | None = Field(
        None,
        min_length=1,
        description='kind session or app: a window manager started before the command, e.g. ["openbox"]',
    )
    cpu_limit: float | None = Field(
        None, gt=0, le=256, description="kind session or app: CPUs each session may use (its cgroup's quota)"
    )
    memory_limit_mib: int | None = Field(
        None,
        ge=64,
        le=1024 * 1024,
        description="kind session or app: memory each session may use (its cgroup)",
    )
    min_size: int = Field(0, ge=0, description="the pool manager keeps at least this many desktops")
    max_size: int | None = Field(None, ge=1, description="the pool never holds more desktops than this")
    spares: int = Field(0, ge=0, description="unassigned running desktops kept ready for fast connects")
    ready_deadline_s: int = Field(
        300,
        ge=10,
        le=3600,
        description="a spare's guest must show it finished booting (console ready marker) within this; "
        "a spare that crashes is replaced, one still silent at the deadline is handed out anyway",
    )
    idle_timeout_s: int | None = Field(
        None, ge=60, description="log a session off after this long without keyboard or mouse input"
    )
    max_session_s: int | None = Field(None, ge=60, description="log a session off after this long in all")
    power_policy: Literal["keep_running", "suspend", "shutoff"] = Field(
        "keep_running",
        description="what happens to a dedicated desktop nobody is logged on to: keep it running, suspend "
        "it (memory saved to the host's disk) or shut it off; connecting starts it again",
    )
    power_after_s: int = Field(
        900, ge=0, description="apply power_policy this long after the desktop's last session ended"
    )
    shutdown_timeout_s: int = Field(
        60, ge=0, le=600, description="shutoff waits this long for the guest to shut down, then powers it off"
    )
    clipboard: Literal["both", "to_desktop", "to_client", "none"] = Field(
        "both",
        description="clipboard through the console: both ways, to_desktop (browser to desktop only), "
        "to_client (desktop to browser only) or none; blocked transfers are audited",
    )
    clipboard_max_bytes: int = Field(
        1024 * 1024,
        ge=1,
        le=16 * 1024 * 1024,
        description="largest clipboard transfer; longer text is cut (and audited)",
    )
    watermark: bool = Field(
        False,
        description="overlay the user name, source address and time on the console page, so that a photo or "
        "screenshot of the desktop says whose it was (a deterrent, not a control)",
    )
    clipboard_text_only: bool = Field(
        False, description="only plain text crosses the clipboard (no rich text, HTML, images or files)"
    )
    recording: Literal["off", "on", "required"] = Field(
        "off",
        description="record what the console shows (gateway.recording_dir, docs/recording.md): on records "
        "when it can and keeps the console if recording fails; required refuses or ends the console instead",
    )

    @model_validator(mode="after")
    def _sizes_fit(self) -> PoolSettings:
        if self.max_size is not None and max(self.min_size, self.spares) > self.max_size:
            raise ValueError("max_size: must be at least min_size and spares")
        return self

    @model_validator(mode="after")
    def _session_settings(self) -> PoolSettings:
        """Session-host settings only on session and app pools, and what those pools cannot have."""
        sessions = self.kind in SESSION_KINDS
        if self.kind == "app" and self.app_command is None:
            raise ValueError("app_command: required for a pool of kind app")
        only = {
            "app_command": self.kind == "app",
            "session_command": self.kind == "session",
            "window_manager": sessions,
            "cpu_limit": sessions,
            "memory_limit_mib": sessions,
        }
        for key, allowed in only.items():
            if getattr(self, key) is not None and not allowed:
                raise ValueError(f"{key}: not a setting of a pool of kind {self.kind}")
        for key in ("spares", "min_size"):
            if sessions and getattr(self, key):
                raise ValueError(
                    f"{key}: a session belongs to its user from the start; {self.kind} pools have none"
                )
        for key in ("session_command", "app_command", "window_manager"):
            command = getattr(self, key)
            if command is not None and not all(arg.strip() for arg in command):
                raise ValueError(f"{key}: an argument is empty")
        return self

    @property
    def network_zone(self) -> str:
        """The pool's network zone: `zone`, business when unset."""
        return self.zone or "business"

    @model_validator(mode="after")
    def _power_policy_kept_desktops(self) -> PoolSettings:
        if self.power_policy != "keep_running" and self.kind != "dedicated":
            raise ValueError("power_policy: only a dedicated pool keeps desktops nobody is logged on to")
        return self


class MonitorSettings(BaseModel):
    """[monitor]: how fast the broker notices a dead host, and what reconcile does with orphan domains."""

    model_config = ConfigDict(extra="forbid")

    poll_interval_s: float = Field(5.0, gt=0, le=60, description="seconds between health polls of each host")
    down_after_s: float = Field(
        15.0, gt=0, lt=30, description="a host silent this long is marked down and its desktops lost"
    )
    orphans: Literal["report", "destroy"] = Field(
        "report", description="domains of ours the database does not know: report them, or destroy them"
    )

    @model_validator(mode="after")
    def _down_after_poll(self) -> MonitorSettings:
        if self.down_after_s < self.poll_interval_s:
            raise ValueError("down_after_s: must be at least poll_interval_s")
        return self


class TransferSettings(BaseModel):
    """[transfers]: moving a file or text between the network zones' desktops on request (망연계)."""

    model_config = ConfigDict(extra="forbid")

    approver_groups: list[str] = Field(
        default_factory=list,
        description="directory groups whose members approve transfer requests of users who share another "
        "directory group with them (never their own); empty: nobody can approve, so nothing moves",
    )
    max_bytes: int = Field(
        32768,
        ge=1,
        le=16 * 1024 * 1024,
        description="largest file or text a request may carry (a request body must also fit "
        "broker.max_body_bytes: base64 in JSON, or a form upload)",
    )
    allowed_extensions: list[str] = Field(
        default_factory=lambda: ["txt", "csv", "pdf", "hwp", "hwpx", "docx", "xlsx", "pptx", "png", "jpg"],
        description="file name extensions a file request may have (lower case, no dot); text is always allowed",
    )
    scan_command: list[str] | None = Field(
        None,
        min_length=1,
        description="scanning hook run on each request's content before approvers see it, as an argument "
        'list with {path} for the file, e.g. ["clamdscan", "--no-summary", "{path}"]: exit 0 clean, 1 '
        "infected (the request is blocked), anything else an error (blocked too); unset: not scanned",
    )
    scan_timeout_s: float = Field(60.0, gt=0, le=600, description="a scan running longer is an error")


class TerminalSettings(BaseModel):
    """[terminals]: how the device certificates of center terminals (broker.tls_client_ca) are checked for
    revocation at each login at a center terminal, whatever method the user signs in with."""

    model_config = ConfigDict(extra="forbid")

    ocsp_url: str | None = Field(
        None, pattern=r"^https?://", description="OCSP responder to ask instead of the certificate's AIA"
    )
    crl_url: str | None = Field(
        None, pattern=r"^https?://", description="CRL to fetch instead of the certificate's CRL DP"
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed",
        description="when no revocation source answers: closed refuses the login at the terminal, open "
        "admits it and audits that the status was unknown",
    )
    cache_s: int = Field(60, ge=0, le=3600, description="how long one revocation answer is reused")
    revocation_timeout_s: float = Field(5.0, gt=0, le=60, description="timeout of each OCSP/CRL request")


class BrokerConfig(BaseModel):
    """Every section a broker reads; built by `vdi/config.py` from the configuration file."""

    model_config = ConfigDict(extra="forbid")

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings
    ldap: LdapSettings
    lockout: LockoutSettings = Field(default_factory=LockoutSettings)
    totp: TotpSettings = Field(default_factory=TotpSettings)
    certificate: CertificateSettings = Field(default_factory=CertificateSettings)
    hosts: list[HostSettings] = Field(min_length=1)
    pools: list[PoolSettings] = Field(default_factory=list)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    transfers: TransferSettings = Field(default_factory=TransferSettings)
    terminals: TerminalSettings = Field(default_factory=TerminalSettings)

    @model_validator(mode="after")
    def _login_methods_agree(self) -> BrokerConfig:
        listed = self.broker.login_methods
        if listed is not None and ("certificate" in listed) != self.certificate.enabled:
            # Two switches for one thing must not disagree silently; [certificate] also holds its settings.
            enabled = self.certificate.enabled
            raise ValueError(
                f"broker.login_methods: 'certificate' {'is not' if enabled else 'is'} listed, "
                f"but [certificate] enabled = {str(enabled).lower()}"
            )
        try:
            methods.check_names(self.totp.methods)
        except ValueError as exc:
            raise ValueError(f"totp.methods: {exc}") from None
        return self

    def enabled_login_methods(self) -> list[str]:
        """`broker.login_methods`, or today's default: password, and certificate when it is enabled."""
        if self.broker.login_methods is not None:
            return list(self.broker.login_methods)
        return ["password", *(["certificate"] if self.certificate.enabled else [])]

    @model_validator(mode="after")
    def _names_are_unique(self) -> BrokerConfig:
        for section, items in (("hosts", self.hosts), ("pools", self.pools)):
            seen: set[str] = set()
            for index, item in enumerate(items):
                if item.name in seen:
                    raise ValueError(f"{section}[{index}].name: duplicate name {item.name!r}")
                seen.add(item.name)
        return self

    @model_validator(mode="after")
    def _displays_reachable(self) -> BrokerConfig:
        # Security review finding 3: a direct route to a remote host's loopback reaches the gateway's own.
        for index, host in enumerate(self.hosts):
            try:
                check_direct_display(host.uri, host.console_access, host.vnc_listen)
            except ValueError as exc:
                raise ValueError(f"hosts[{index}].{exc}") from None
        return self

    def pool(self, name: str) -> PoolSettings | None:
        return next((p for p in self.pools if p.name == name), None)
