"""The websockify token plugin, called directly the way websockify calls it."""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets

import pytest

from gateway.websockify_plugin import ConsoleTokens, TokenRedactingFilter
from tests.fixtures.gateway import write_gateway_config
from vdi.config import ConfigError


def test_lookup_returns_the_target_once(console_db, gateway_config_file, caplog):
    session = console_db.add_session(vnc_port=5901, vnc_host="10.0.0.7")
    token = console_db.issue(session)
    plugin = ConsoleTokens(str(gateway_config_file))

    assert plugin.lookup(token) == ("10.0.0.7", "5901")
    with caplog.at_level(logging.INFO, logger="gateway.websockify_plugin"):
        assert plugin.lookup(token) is None
    assert "console refused: console token already used (token ***)" in caplog.text
    assert token not in caplog.text


def test_a_desktop_with_a_vnc_password_is_refused_as_websockify_cannot_log_in(
    console_db, gateway_config_file, caplog
):
    session = console_db.add_session(vnc_port=5901, vnc_password="pw123456")
    plugin = ConsoleTokens(str(gateway_config_file))
    with caplog.at_level(logging.WARNING, logger="gateway.websockify_plugin"):
        assert plugin.lookup(console_db.issue(session)) is None
    assert "has a VNC password, which only `vdi gateway` can log in with" in caplog.text
    assert "pw123456" not in caplog.text


def test_lookup_refuses_expired_and_unknown_tokens(console_db, gateway_config_file):
    session = console_db.add_session(vnc_port=5901)
    expired = console_db.issue(session, now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    plugin = ConsoleTokens(str(gateway_config_file))

    assert plugin.lookup(expired) is None
    assert plugin.lookup("no-such-token") is None
    assert plugin.lookup("") is None


def test_lookup_never_raises_when_the_database_is_unusable(tmp_path, caplog):
    config = write_gateway_config(
        tmp_path / "vdi.toml",
        database_url=f"sqlite:///{tmp_path}/missing-dir/vdi.db",
        port=8081,
        allowed_origins=[],
    )
    plugin = ConsoleTokens(str(config))
    token = secrets.token_urlsafe(32)  # well formed, so the lookup reaches the database
    with caplog.at_level(logging.ERROR, logger="gateway.websockify_plugin"):
        assert plugin.lookup(token) is None
    assert "token lookup failed (token ***)" in caplog.text
    assert token not in caplog.text


def test_a_bad_token_source_stops_websockify_at_start(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        ConsoleTokens(str(tmp_path / "absent.toml"))


def test_lookup_works_in_a_forked_child(console_db, gateway_config_file):
    """websockify forks per connection after the parent may already have used the plugin."""
    session = console_db.add_session(vnc_port=5902)
    first, second = console_db.issue(session), console_db.issue(session)
    plugin = ConsoleTokens(str(gateway_config_file))
    assert plugin.lookup(first) == ("127.0.0.1", "5902")

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        try:
            os.write(write_end, repr(plugin.lookup(second)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as answer:
        assert answer.read() == repr(("127.0.0.1", "5902"))
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize(
    ("message", "masked"),
    [
        ('"GET /?token=abc123 HTTP/1.1" 101 -', '"GET /?token=*** HTTP/1.1" 101 -'),
        ("127.0.0.1: Path: '/websockify?token=abc123&x=1'", "127.0.0.1: Path: '/websockify?token=***&x=1'"),
        ("127.0.0.1: Token 'abc123' not found", "127.0.0.1: Token '***' not found"),
        ("connecting to: 127.0.0.1:5901", "connecting to: 127.0.0.1:5901"),
    ],
)
def test_websockify_log_lines_are_masked(message, masked):
    record = logging.LogRecord("websockify", logging.INFO, __file__, 1, "%s", (message,), None)
    assert TokenRedactingFilter().filter(record)
    assert record.getMessage() == masked
