"""Settings of the WebSocket-to-VNC gateway: its own section and the database's, nothing else.

A gateway's configuration file needs no cookie secret, directory settings or host list: the
gateway reads only `[gateway]` and `[database]` (other sections, if the file has them, are the
broker's business and are not looked at here).
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from broker.db.config import DatabaseSettings
from broker.settings_file import ConfigError, format_validation_error, read_toml, resolve_sqlite_url
from monitoring.access import MetricsAccessSettings
from monitoring.logs import LoggingSettings


class GatewaySettings(MetricsAccessSettings):
    model_config = ConfigDict(extra="forbid")

    listen_address: str = Field("127.0.0.1", description="address the WebSocket endpoint listens on")
    port: int = Field(8081, ge=0, le=65535, description="TCP port of the WebSocket endpoint")
    path: str = Field("/ws", pattern=r"^/", description="URL path of the WebSocket endpoint")
    allowed_origins: list[str] = Field(
        default_factory=list, description="exact Origin values (scheme://host:port) browsers may connect from"
    )
    connect_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="time allowed to reach a desktop's display (over SSH: each of connect, login, channel open)",
    )
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate (and chain) to serve wss:// (needed when the portal is on https://: "
        "browsers refuse ws:// from an https page)",
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    ssh_key_file: Path | None = Field(
        None,
        description="private key the gateway logs in to hosts with, for console_access ssh "
        "(unset: ssh routes are refused)",
    )
    ssh_known_hosts: Path | None = Field(
        None,
        description="OpenSSH known_hosts file with the hosts' keys; an unknown or mismatching host key "
        "is refused (unset: ssh routes are refused)",
    )
    max_tunnels_per_session: int = Field(
        2,
        ge=1,
        le=16,
        description="console tunnels one desktop session may hold open at once on this gateway",
    )
    handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a connection that has not sent its complete WebSocket upgrade request by then is closed",
    )
    vnc_password_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="the broker's broker.vnc_password_key, to open desktops' VNC passwords (unset: "
        "consoles of desktops that have one are refused)",
    )
    rfb_handshake_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="time allowed for the RFB handshake with the desktop, and with the browser once its "
        "WebSocket is open",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="largest RFB message accepted from a browser (and cut text held from a desktop); "
        "a larger one closes the console (cut text from a desktop is dropped)",
    )
    uvloop: bool = Field(
        True,
        description="run the gateway's event loop on uvloop when it is installed (a faster loop: more "
        "throughput and shorter round trips, vdi bench tunnel); false, or uvloop missing: asyncio's own",
    )
    protocol_relay: bool = Field(
        True,
        description="once a console is open, drive its two sockets with the event loop's protocols instead "
        "of Tornado's streams (fewer steps per message: vdi bench tunnel), and on plain listeners upgrade "
        "consoles' WebSockets without Tornado's HTTP server (less CPU per new console); consoles over TLS "
        "(wss:// served by the gateway itself) always stay on Tornado's server and streams",
    )
    ssh_idle_close_s: float = Field(
        300.0, gt=0, le=86400, description="an SSH connection to a host with no tunnel left closes after this"
    )
    recording_dir: Path | None = Field(
        None,
        description="directory of console recordings, for pools with recording on (unset: their consoles are "
        "not recorded, and refused where recording is required); docs/recording.md",
    )
    recording_retention_days: int = Field(
        90, ge=1, le=3650, description="recordings older than this many days are deleted"
    )
    recording_purge_interval_s: float = Field(
        3600.0, ge=10, le=86400, description="how often the gateway deletes recordings past their retention"
    )
    recording_segment_mb: int = Field(
        16, ge=1, le=1024, description="a recording's segment file is closed and a new one begun at this size"
    )
    recording_segment_s: int = Field(
        600, ge=10, le=86400, description="... or when it has covered this many seconds"
    )
    recording_min_free_mb: int = Field(
        1024,
        ge=0,
        description="a recording does not start, or stops, when the directory's file system has less free "
        "space than this",
    )
    recording_backlog_mb: int = Field(
        64,
        ge=1,
        le=4096,
        description="a recording stops when its writer falls this far behind the console (disk too slow)",
    )
    recording_compression_level: int = Field(
        3, ge=1, le=9, description="zlib level of recordings (1 fastest, 9 smallest)"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> "GatewaySettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_key: tls_cert and tls_key must be set together")
        return self


class GatewayConfig(BaseModel):
    """What a gateway process reads."""

    model_config = ConfigDict(extra="forbid")

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """The `[gateway]`, `[database]` and `[logging]` sections of a configuration file; ConfigError names the key."""
    path = Path(path)
    data = read_toml(path)
    try:
        config = GatewayConfig.model_validate(
            {key: data[key] for key in ("gateway", "database", "logging") if key in data}
        )
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    config.database.url = resolve_sqlite_url(config.database.url, path.parent.resolve())
    return config
