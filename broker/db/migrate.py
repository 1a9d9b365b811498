"""Schema migrations with Alembic, run programmatically (`vdi db upgrade`, broker start, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Percent signs in URLs (escaped passwords) would be read as interpolation by configparser.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def ensure_sqlite_directory(url: str) -> None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "heads") -> None:
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), revision)
