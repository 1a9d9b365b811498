"""Console tokens: random, hashed at rest, single use, short-lived, bound to session and target."""

import datetime as dt
import logging

import pytest
from sqlalchemy import event, select

from broker.db import Database
from broker.db.config import DatabaseSettings
from broker.db.migrate import upgrade
from broker.db.models import ConsoleToken, Desktop, DesktopSession, Host, Pool, User, utcnow
from broker.db.tokens import (
    TOKEN_BYTES,
    TokenRefused,
    consume_token,
    consume_tokens,
    hash_token,
    issue_token,
    mask,
)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/tokens.db"
    upgrade(url)
    database = Database(DatabaseSettings(url=url))
    with database.transaction() as s:
        s.add(User(username="kim", display_name="김민준", groups=["mois"]))
        s.add(Pool(name="p", display_name="P", image="demo", groups=["mois"]))
        s.add(Host(name="h", uri="qemu:///system"))
        s.flush()
        s.add(Desktop(id=1, pool_name="p", host_name="h", domain_name="d1", image="demo", state="running"))
        s.flush()
        s.add(DesktopSession(id="s1", username="kim", desktop_id=1))
    yield database
    database.close()


def issue(db, ttl_s=30, now=None):
    with db.transaction() as s:
        return issue_token(
            s, session_id="s1", desktop_id=1, host="127.0.0.1", port=5900, ttl_s=ttl_s, now=now
        )


def consume(db, token, now=None):
    with db.transaction() as s:
        return consume_token(s, token, now=now)


def test_token_has_at_least_128_random_bits_and_only_its_hash_is_stored(db):
    token = issue(db)
    assert TOKEN_BYTES * 8 >= 128 and len(token) >= 22
    with db.transaction() as s:
        stored = s.scalars(select(ConsoleToken.token_hash)).all()
    assert stored == [hash_token(token)]
    assert token not in stored


def test_token_opens_its_own_target_once(db):
    token = issue(db)
    target = consume(db, token)
    assert (target.session_id, target.desktop_id, target.host, target.port) == ("s1", 1, "127.0.0.1", 5900)
    with pytest.raises(TokenRefused, match="already used"):
        consume(db, token)


def test_a_token_claimed_on_a_core_connection_opens_once_too(db):
    """Database.run_statements (the gateway's claim): no ORM session, same answers."""
    token, expired = issue(db), issue(db, ttl_s=30, now=utcnow() - dt.timedelta(seconds=31))

    def claim(value):
        with db.engine.begin() as connection:
            return consume_token(connection, value)

    assert claim(token).session_id == "s1"
    with pytest.raises(TokenRefused, match="already used"):
        claim(token)
    with pytest.raises(TokenRefused, match="expired"):
        claim(expired)
    with pytest.raises(TokenRefused, match="unknown"):
        claim("x" * 43)


def test_expired_token_is_refused(db):
    token = issue(db, ttl_s=30, now=utcnow() - dt.timedelta(seconds=31))
    with pytest.raises(TokenRefused, match="expired"):
        consume(db, token)


@pytest.mark.parametrize("forged", ["", "x" * 300, "not-a-real-token-at-all-0123456789"])
def test_forged_token_is_refused(db, forged):
    issue(db)
    with pytest.raises(TokenRefused):
        consume(db, forged)


def test_token_for_an_ended_session_is_refused(db):
    token = issue(db)
    with db.transaction() as s:
        s.get(DesktopSession, "s1").state = "ended"
    with pytest.raises(TokenRefused, match="session has ended"):
        consume(db, token)


def test_refusal_reason_never_contains_the_token(db, caplog):
    token = issue(db)
    consume(db, token)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TokenRefused) as refused:
        consume(db, token)
    assert token not in str(refused.value)
    assert mask(token) == "***"


def test_tokens_claimed_together_each_get_their_own_answer_and_refusals_write_nothing(db):
    """consume_tokens (the gateway's gathered claims): one transaction, an answer per token in order; a
    used, unknown, expired or repeated token or an ended session is refused from the read, without a write,
    and does not undo the others' claims."""
    fresh, used = issue(db), issue(db)
    expired = issue(db, ttl_s=30, now=utcnow() - dt.timedelta(seconds=31))
    consume(db, used)
    with db.transaction() as s:
        s.add(DesktopSession(id="s2", username="kim", desktop_id=1, state="ended"))
    with db.transaction() as s:
        ended = issue_token(s, session_id="s2", desktop_id=1, host="127.0.0.1", port=5900, ttl_s=30)
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with db.engine.begin() as connection:
        answers = consume_tokens(connection, [used, "x" * 43, fresh, expired, fresh, ended, "bad"])
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1  # the fresh token's claim; its repeat is refused from the read
    assert answers[2].session_id == "s1" and answers[2].port == 5900
    reasons = [str(answer) for index, answer in enumerate(answers) if index != 2]
    assert reasons == [
        "console token already used",
        "unknown console token",
        "console token expired",
        "console token already used",
        "session has ended",
        "missing or malformed console token",
    ]
    assert all(isinstance(answer, TokenRefused) for index, answer in enumerate(answers) if index != 2)
    with pytest.raises(TokenRefused, match="already used"):
        consume(db, fresh)
