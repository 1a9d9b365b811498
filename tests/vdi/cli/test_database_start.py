"""Bad input at start: a database out of reach, or one a newer smartwork-vdi migrated, stops `vdi broker`,
`vdi gateway` and `vdi db upgrade` with a message naming `database.url`, its password never shown."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import create_engine, text

from broker.db.migrate import upgrade
from tests.fixtures.common import free_port
from tests.fixtures.database import database_url
from tests.fixtures.gateway import write_gateway_config

SECRET = "s3cret-never-printed"


def vdi(config_path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(config_path), *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config_with(tmp_path, url: str):
    return write_gateway_config(tmp_path / "vdi.toml", database_url=url, port=free_port(), allowed_origins=[])


def test_unreachable_postgresql_stops_broker_and_gateway_naming_database_url(tmp_path):
    # A port where nothing listens: connection refused, at once.
    url = f"postgresql+psycopg://vdi:{SECRET}@127.0.0.1:{free_port()}/vdi"
    path = config_with(tmp_path, url)
    for command in (["broker"], ["gateway"], ["db", "upgrade"]):
        result = vdi(path, *command)
        assert result.returncode == 1, (command, result.stderr)
        assert (
            "database.url: cannot reach the database at postgresql+psycopg://vdi:***@127.0.0.1"
            in result.stderr
        )
        assert SECRET not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_a_schema_newer_than_the_code_is_refused_with_both_versions(tmp_path):
    url = database_url(tmp_path / "vdi.db")
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as connection:  # as if a newer release had migrated it
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    result = vdi(config_with(tmp_path, url), "db", "upgrade")
    assert result.returncode == 1, result.stderr
    assert "database.url:" in result.stderr
    assert "schema revision 0099, newer than this smartwork-vdi knows (its newest is 00" in result.stderr
    assert "refusing to migrate" in result.stderr
    engine = create_engine(url)
    with engine.connect() as connection:  # nothing was touched
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "0099"
    engine.dispose()
