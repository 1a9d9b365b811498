"""Reading a TOML settings file into a typed model, with errors that name the offending key.

The broker and the gateway each validate only the sections they own (broker.config.BrokerConfig,
gateway.config.GatewayConfig); `vdi/config.py` composes the whole file from them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(error: ValidationError) -> str:
    return "; ".join(
        f"{_key_path(item['loc'])}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False)
    )


def read_toml(path: str | Path) -> dict:
    """The file's TOML document; ConfigError when it cannot be read or parsed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """A relative SQLite path in a settings file means "next to the file"."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        return "sqlite:///" + str((base_dir / url[len("sqlite:///") :]).resolve())
    return url
