"""The configuration file: one TOML document, one typed schema, validated at start.

Each package owns the schema of the sections it reads (`broker.config.BrokerConfig`,
`gateway.config.GatewayConfig`); this module composes them into the file's schema, adds the
sections only the command line reads (lab, logging), and hands each process just its part.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker.config import BrokerConfig
from broker.settings_file import ConfigError, format_validation_error, read_toml, resolve_sqlite_url
from gateway.config import GatewayConfig, GatewaySettings
from monitoring.logs import LoggingSettings

__all__ = ["Config", "ConfigError", "LabSettings", "load_config", "parse_config"]


class LabSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(Path("/var/lib/smartwork-vdi/lab"), description="lab daemons' data and pid files")
    ldap_port: int = Field(3389, ge=1, le=65535, description="loopback port of the lab's slapd")
    ldap_suffix: str = Field("dc=smartwork,dc=go,dc=kr", description="suffix of the lab's demo directory")
    session_hosts: list[str] = Field(
        [],
        max_length=8,
        description="session hosts (SBC) `vdi demo` brings up in network namespaces and adds as [[hosts]] "
        'with provider session-host and the label provider = "session-host", e.g. ["dsh1", "dsh2"] '
        "(docs/session-hosts.md)",
    )
    session_host_first_octet: int = Field(
        31,
        ge=2,
        le=240,
        description="last address byte of the first demo session host on the lab bridge (10.77.0.0/24); "
        "the others follow",
    )

    @field_validator("session_hosts")
    @classmethod
    def _host_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9]{0,8}", name):
                raise ValueError(f"{name!r}: a session host name is a letter and up to 8 letters or digits")
        if len(set(names)) != len(names):
            raise ValueError("session host names must differ")
        return names


class Config(BrokerConfig):
    """The whole file: the broker's sections, the gateway's, and the command line's own."""

    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    lab: LabSettings = Field(default_factory=LabSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _vnc_password_keys_agree(self) -> Config:
        # One file for both processes: a key that differs would refuse every console, found late.
        broker_key, gateway_key = self.broker.vnc_password_key, self.gateway.vnc_password_key
        if broker_key and gateway_key and broker_key.get_secret_value() != gateway_key.get_secret_value():
            raise ValueError("gateway.vnc_password_key: differs from broker.vnc_password_key")
        return self

    def broker_config(self) -> BrokerConfig:
        """The broker's part: no gateway, lab or logging settings (logging is set up by the command line)."""
        return BrokerConfig.model_construct(
            **{name: getattr(self, name) for name in BrokerConfig.model_fields}
        )

    def gateway_config(self) -> GatewayConfig:
        """The gateway's part: its own section and the database's."""
        return GatewayConfig.model_construct(
            gateway=self.gateway, database=self.database, logging=self.logging
        )


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
    config.database.url = resolve_sqlite_url(config.database.url, base_dir)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(read_toml(path), base_dir=path.parent.resolve())
