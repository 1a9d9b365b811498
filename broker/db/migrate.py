"""Schema migrations with Alembic, run programmatically (`vdi db upgrade`, broker start, tests)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from broker.db import DatabaseStartError, check_reachable, make_engine, safe_url

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


class SchemaTooNew(DatabaseStartError):
    """The database was migrated by a newer smartwork-vdi: this one must not touch it."""


@contextmanager
def _alembic_at(level: int):
    """Alembic's loggers at `level` for a while: its INFO lines ("Context impl SQLiteImpl.") are noise to a
    command that only reads, and the account of what it migrated for `vdi db upgrade` and the broker's start."""
    alembic_log = logging.getLogger("alembic")
    before = alembic_log.level
    alembic_log.setLevel(level)
    try:
        yield
    finally:
        alembic_log.setLevel(before)


def current_revisions(url: str) -> tuple[str, ...]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection, _alembic_at(logging.WARNING):
            return MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()


def check_known_schema(url: str, script: ScriptDirectory) -> None:
    """SchemaTooNew naming both versions if the database is at a revision this code does not have.

    Alembic itself would stop with "Can't locate revision"; an older broker started by mistake against a
    database a newer one already migrated must say so, and must not try to migrate it back.
    """
    newest = script.get_current_head()
    for revision in current_revisions(url):
        try:
            script.get_revision(revision)
        except CommandError:
            raise SchemaTooNew(
                f"database.url: the database at {safe_url(url)} has schema revision {revision}, newer than "
                f"this smartwork-vdi knows (its newest is {newest}); refusing to migrate: run the newer "
                "version, or restore the database from before its upgrade"
            ) from None


def upgrade(
    url: str, revision: str = "heads", verbose: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Migrate the schema to `revision`: DatabaseUnreachable or SchemaTooNew (naming database.url) first.

    Returns the revisions before and after. A database already at the newest revision is left alone
    without running Alembic at all, so read-only commands print no migration lines; Alembic's INFO lines
    ("Running upgrade ...") are shown only with `verbose` (`vdi db upgrade`).
    """
    ensure_sqlite_directory(url)
    check_reachable(url)
    config = alembic_config(url)
    script = ScriptDirectory.from_config(config)
    check_known_schema(url, script)
    before = current_revisions(url)
    if revision == "heads" and set(before) == set(script.get_heads()):
        return before, before
    with _alembic_at(logging.INFO if verbose else logging.WARNING):
        command.upgrade(config, revision)
    return before, current_revisions(url)
