"""JSON log lines (monitoring/logs.py): the same keys on every line, the ids bound in the context, secrets masked,
and `[logging] format = "json"` honoured by a `vdi` command run as its own process."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest

from monitoring import logs
from tests.fixtures.common import ROOT

FIELDS = ["time", "level", "logger", "message", "request_id", "user", "session"]


def formatted(message: str, *args, exc_info=None) -> dict:
    record = logging.LogRecord("broker.test", logging.WARNING, __file__, 1, message, args, exc_info)
    return json.loads(logs.JsonFormatter().format(record))


def test_a_line_has_every_field_in_order_with_unknown_ids_null():
    async def unbound() -> dict:
        return formatted("plain %s", "text")

    line = asyncio.run(unbound())

    assert list(line) == FIELDS
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "broker.test", "plain text")
    assert line["time"].endswith("+00:00")
    assert (line["request_id"], line["user"], line["session"]) == (None, None, None)


def test_ids_bound_in_a_task_reach_its_lines_and_the_tasks_it_starts_but_not_others():
    async def request(request_id: str) -> list[dict]:
        logs.bind(request_id=request_id, user="kimmj", session="s-1")
        child = asyncio.create_task(asyncio.sleep(0, result=formatted("child")))
        return [formatted("own"), await child]

    async def scenario():
        return await asyncio.gather(request("r-1"), request("r-2")), formatted("outside")

    (first, second), outside = asyncio.run(scenario())

    assert {line["request_id"] for line in first} == {"r-1"}
    assert {line["request_id"] for line in second} == {"r-2"}
    assert first[0]["user"] == "kimmj" and first[1]["session"] == "s-1"
    assert outside["request_id"] is None


def test_token_like_values_are_masked_in_messages_and_tracebacks():
    try:
        raise ValueError("GET /ws?token=abc123secret&x=1")
    except ValueError:
        line = formatted("refused %s", "/ws?token=abc123secret&password=hunter2", exc_info=sys.exc_info())

    assert "abc123secret" not in json.dumps(line) and "hunter2" not in json.dumps(line)
    assert "token=***" in line["message"] and "token=***" in line["exception"]


@pytest.mark.parametrize(
    ("value", "valid"),
    [("a1b2", True), ("proxy-7.x:y_z", True), ("", False), ("a b", False), ("x" * 65, False)],
)
def test_request_ids_from_outside_are_short_plain_tokens(value, valid):
    assert logs.valid_request_id(value) is valid


def test_json_format_switches_a_vdi_command_to_json_lines(tmp_path):
    config = tmp_path / "vdi.toml"
    config.write_text(
        f'[[hosts]]\nname = "hv1"\nuri = "qemu:///system"\n\n[database]\nurl = "sqlite:///{tmp_path}/vdi.db"\n\n'
        f'[broker]\ncookie_secret = "{"x" * 32}"\n\n[ldap]\nuser_base = "ou=people,dc=test"\n'
        'group_base = "ou=groups,dc=test"\n\n[logging]\nformat = "json"\n'
    )

    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(config), "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )

    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stderr
    assert all(list(line) == FIELDS for line in lines)
    assert any(line["logger"].startswith("alembic") for line in lines)


def test_an_unknown_format_names_the_key(tmp_path):
    config = tmp_path / "vdi.toml"
    config.write_text('[logging]\nformat = "xml"\n')

    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(config), "gateway"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )

    assert result.returncode == 2
    assert "logging.format" in result.stderr
