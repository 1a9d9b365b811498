"""Console token claims gathered into shared transactions (gateway/claims.py)."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from sqlalchemy import event

from broker.db.tokens import TokenRefused
from gateway.claims import TokenClaims
from tests.fixtures.gateway import RFB_BANNER, receive_until, run_async, running_gateway


async def first_answer(conn) -> object:
    """ "opened" when the console's first message is the RFB banner, else the close code and reason."""
    message = await asyncio.wait_for(conn.read_message(), 10.0)
    if message is None:
        return conn.close_code, conn.close_reason
    return "opened" if message.startswith(RFB_BANNER[:4]) else message


def test_claims_made_while_one_runs_share_the_next_transaction_and_keep_their_own_answers(
    console_db, fake_vnc
):
    sessions = [console_db.add_session(vnc_port=fake_vnc.port) for _ in range(3)]
    tokens = [console_db.issue(session) for session in sessions]
    transactions: list[object] = []
    event.listen(console_db.db.engine, "begin", transactions.append)

    async def scenario():
        claims = TokenClaims(console_db.db)
        answers = await asyncio.gather(
            *(claims.consume(token) for token in [*tokens, tokens[0], secrets.token_urlsafe(32), "x"]),
            return_exceptions=True,
        )
        assert [answer.session_id for answer in answers[:3]] == [session.session_id for session in sessions]
        assert [str(answer) for answer in answers[3:]] == [
            "console token already used",
            "unknown console token",
            "missing or malformed console token",
        ]
        # The first went at once, alone; the others came while it ran and went together; the malformed
        # one never reached the database.
        assert len(transactions) == 2
        with pytest.raises(TokenRefused, match="already used"):
            await claims.consume(tokens[1])
        assert len(transactions) == 3

    run_async(scenario())


def test_a_database_error_fails_every_claim_of_its_transaction_and_the_next_ones_run(console_db, fake_vnc):
    session = console_db.add_session(vnc_port=fake_vnc.port)
    token = console_db.issue(session)
    failures = [RuntimeError("driver bug")]

    class FailingOnce:
        async def run_statements(self, fn):
            if failures:
                raise failures.pop()
            return await console_db.db.run_statements(fn)

    async def scenario():
        claims = TokenClaims(FailingOnce())
        tokens = [token, token, *(console_db.issue(session) for _ in range(2))]
        answers = await asyncio.gather(*(claims.consume(value) for value in tokens), return_exceptions=True)
        # The first transaction (the first claim, alone) failed and claimed nothing; the next one, of the
        # three that came meanwhile, opened the same token and the two others.
        assert [type(answer).__name__ for answer in answers] == ["RuntimeError", *["ConsoleTarget"] * 3]
        with pytest.raises(TokenRefused, match="already used"):
            await claims.consume(token)

    run_async(scenario())


def test_consoles_opened_at_once_with_one_token_open_once(console_db, fake_vnc, gateway_config):
    sessions = [console_db.add_session(vnc_port=fake_vnc.port) for _ in range(4)]
    tokens = [console_db.issue(session) for session in sessions]

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conns = await asyncio.gather(*(gateway.connect(token) for token in [*tokens, tokens[2]]))
            for conn in conns[:2] + conns[3:4]:
                assert await receive_until(conn, RFB_BANNER) == RFB_BANNER
            # tokens[2] went twice: one console opened, the other was refused; which one is a race.
            outcomes = await asyncio.gather(first_answer(conns[2]), first_answer(conns[4]))
            assert sorted(outcomes, key=str) == [(1008, "console token already used"), "opened"], outcomes
            assert fake_vnc.connections == 4
            for conn in conns:
                conn.close()

    run_async(scenario())
