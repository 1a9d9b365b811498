"""Read-only commands print their answer and no migration lines; `vdi db upgrade` says what it migrated."""

import subprocess
import sys

import pytest

from tests.fixtures.cli import write_cli_config
from tests.fixtures.common import ROOT

POOL = """
[[pools]]
name = "mois-office"
display_name = "행정안전부"
groups = ["mois"]
"""

MIGRATION_WORDS = ("alembic", "migration", "Running upgrade", "Context impl", "non-transactional DDL")


@pytest.fixture
def vdi(tmp_path):
    path = write_cli_config(tmp_path, POOL)

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "vdi.cli", "--config", str(path), *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    return run


def no_migration_lines(result: subprocess.CompletedProcess) -> bool:
    output = result.stdout + result.stderr
    return not any(word.lower() in output.lower() for word in MIGRATION_WORDS)


@pytest.mark.parametrize(
    "command",
    [
        ("host", "list"),
        ("host", "show", "seeded"),
        ("image", "list"),
        ("pool", "list"),
        ("pool", "show", "mois-office"),
        ("pool", "rollout-status", "mois-office"),
        ("center", "list"),
    ],
    ids=" ".join,
)
def test_read_only_commands_print_no_migration_lines(vdi, command):
    # The first run creates the schema (quietly), the second finds it current and leaves Alembic alone.
    for _ in range(2):
        result = vdi(*command)
        assert result.returncode == 0, result.stderr
        assert no_migration_lines(result), result.stdout + result.stderr


def test_db_upgrade_says_what_it_migrated(vdi):
    first = vdi("db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "database migrated from (empty) to " in first.stdout
    assert "Running upgrade" in first.stderr  # Alembic's own account of each step
    again = vdi("db", "upgrade")
    assert again.returncode == 0 and "database is already at the latest revision" in again.stdout
    assert no_migration_lines(again)
