"""Regression tests for the console-token findings of the security review (issue 11)."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets

import pytest
from sqlalchemy import event, func, select

from broker.app import prepare_database
from broker.db.models import ConsoleToken, utcnow
from broker.db.tokens import TokenRefused, consume_token, issue_token
from tests.fixtures.broker import seed_session
from tests.fixtures.common import wait_until
from tests.fixtures.gateway import metric


@pytest.fixture
def writes(broker_db):
    """The INSERT, UPDATE and DELETE statements the test database sees."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            seen.append(statement)

    event.listen(broker_db.engine, "before_cursor_execute", record)
    yield seen
    event.remove(broker_db.engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    "token",
    ["x" * 300, "forged-token", "a" * 42 + "!", secrets.token_urlsafe(32)],
    ids=["oversized", "short", "bad-alphabet", "well-formed-unknown"],
)
def test_finding_5_a_bad_token_costs_no_database_write(broker_db, writes, token):
    """Every bad token cost a database write (a conditional UPDATE); garbage is now refused before the
    database and an unknown well-formed token after one indexed read."""
    with broker_db.transaction() as session, pytest.raises(TokenRefused):
        consume_token(session, token)
    assert writes == []


def test_finding_9_expired_console_tokens_are_purged_by_the_broker(
    broker_server, broker_config, broker_db, fake_authenticator, unreachable_providers
):
    """Console tokens were never purged (purge_expired had no caller): the table grew forever."""
    asyncio.run(prepare_database(broker_db, broker_config))  # the pool and host rows a broker makes
    session_id, desktop_id = seed_session(broker_db, "kimmj", "mois-office")
    long_ago = utcnow() - dt.timedelta(days=2)
    with broker_db.transaction() as session:
        for _ in range(5):
            issue_token(
                session,
                session_id=session_id,
                desktop_id=desktop_id,
                host="h",
                port=1,
                ttl_s=30,
                now=long_ago,
            )
        fresh = issue_token(session, session_id=session_id, desktop_id=desktop_id, host="h", port=1, ttl_s=30)
    purged_before = metric("vdi_console_tokens_purged_total")

    broker_server(broker_config, authenticator=fake_authenticator, providers=unreachable_providers)

    def remaining() -> int:
        with broker_db.transaction() as session:
            return session.scalar(select(func.count()).select_from(ConsoleToken))

    wait_until(lambda: remaining() == 1, 30, "the expired tokens purged")
    assert metric("vdi_console_tokens_purged_total") == purged_before + 5
    with broker_db.transaction() as session:
        assert consume_token(session, fresh).session_id == session_id  # the live token is untouched
