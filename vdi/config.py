"""The configuration file: one TOML document, one typed schema, validated at start.

Each package owns the schema of its own section; this module composes them and turns
validation failures into messages that name the offending key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.config import BrokerSettings, MonitorSettings, PoolSettings
from broker.db.config import DatabaseSettings
from broker.placement.config import PlacementSettings
from gateway.config import GatewaySettings
from hypervisor.config import HostSettings
from images.config import ImageSettings
from sso.config import CertificateSettings, LdapSettings, LockoutSettings, TotpSettings


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


class LabSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(Path("/var/lib/smartwork-vdi/lab"), description="lab daemons' data and pid files")
    ldap_port: int = Field(3389, ge=1, le=65535, description="loopback port of the lab's slapd")
    ldap_suffix: str = Field("dc=smartwork,dc=go,dc=kr", description="suffix of the lab's demo directory")


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="log level")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    ldap: LdapSettings
    lockout: LockoutSettings = Field(default_factory=LockoutSettings)
    totp: TotpSettings = Field(default_factory=TotpSettings)
    certificate: CertificateSettings = Field(default_factory=CertificateSettings)
    hosts: list[HostSettings] = Field(min_length=1)
    pools: list[PoolSettings] = Field(default_factory=list)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    lab: LabSettings = Field(default_factory=LabSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _names_are_unique(self) -> Config:
        for section, items in (("hosts", self.hosts), ("pools", self.pools)):
            seen: set[str] = set()
            for index, item in enumerate(items):
                if item.name in seen:
                    raise ValueError(f"{section}[{index}].name: duplicate name {item.name!r}")
                seen.add(item.name)
        return self

    def pool(self, name: str) -> PoolSettings | None:
        return next((p for p in self.pools if p.name == name), None)


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        lines.append(f"{_key_path(item['loc'])}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: dict, base_dir: Path | None = None) -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if base_dir is not None:
        _resolve_paths(config, base_dir)
    return config


def _resolve_paths(config: Config, base_dir: Path) -> None:
    # Relative paths in the file mean "next to the file", so a checkout can carry its own demo config.
    config.images.cache_dir = (base_dir / config.images.cache_dir).resolve()
    config.lab.state_dir = (base_dir / config.lab.state_dir).resolve()
    url = config.database.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        config.database.url = "sqlite:///" + str((base_dir / url[len("sqlite:///") :]).resolve())


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, base_dir=path.parent.resolve())
