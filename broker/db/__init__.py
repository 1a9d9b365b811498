"""Database access: one engine per process, blocking work kept off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, exc, text, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from broker.db.config import DatabaseSettings

T = TypeVar("T")

# Degraded mode (docs/database.md): with PostgreSQL down or out of reach, a request must fail within 2 s,
# not hang. A new connection gives up after CONNECT_TIMEOUT_S (libpq's connect_timeout); a request
# waiting for a pooled connection gives up after POOL_TIMEOUT_S; a pooled connection is checked before use
# (_check_idle_connection), so connections the server dropped while it was stopped are replaced, and
# everything works again by itself once the server is back.
CONNECT_TIMEOUT_S = 2
POOL_TIMEOUT_S = 2.0


class DatabaseStartError(Exception):
    """The process cannot start on this database; the message names `database.url` (password hidden)."""


class DatabaseUnreachable(DatabaseStartError):
    pass


def safe_url(url: str) -> str:
    """The URL as it may be shown: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: show its scheme only, in case the rest holds a password
        return url.split(":", 1)[0] + ":…"


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (as opposed to a bad statement or a conflict).

    psycopg's connection failures carry no SQLSTATE; a server shutting down answers class 57P
    (operator intervention) and a broken connection class 08; SQLAlchemy's pool timeout and an invalidated
    connection are the same thing seen from the pool. SQLite's own errors (a locked file) are not this.
    """
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if type(orig).__module__.startswith("sqlite3"):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def check_reachable(url: str) -> None:
    """Connect once; DatabaseUnreachable naming `database.url` if that fails (start of `vdi broker`/`gateway`)."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise DatabaseUnreachable(
            f"database.url: cannot reach the database at {safe_url(url)}: {cause[0] if cause else exc}"
        ) from None
    finally:
        engine.dispose()


def move_state(
    db: Session, model: type, key: Any, from_states: tuple[str, ...], to: str, **values: Any
) -> bool:
    """Set the row's `state` (and `values`) only while it is still in one of `from_states`; False if not.

    A conditional write, not a read followed by a write: a background task decides from what it read a
    moment ago, and another request or another broker may have changed the row since. The last committed
    state decides, in SQLite and in PostgreSQL at READ COMMITTED alike.
    """
    query = update(model).where(model.id == key, model.state.in_(from_states))
    return bool(db.execute(query.values(state=to, **values)).rowcount)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the gateway read and consume tokens while the broker writes; busy_timeout
    # turns short write contention between the two processes into a wait, not an error.
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit survives a crash of the
    # process (it is in the WAL), and the database is never corrupted; only a power failure may lose the
    # last commits. Every console token and placement claim was paying an fsync (vdi bench tunnel).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _idle_connection_broken(dbapi_connection) -> bool:
    """Whether a pooled psycopg connection is known to be unusable, without a round trip to the server.

    An idle connection has nothing to read: the server sends nothing unasked (the brokers LISTEN to
    nothing). A readable socket is a server that ended the connection (its goodbye, an error, or end of
    file after a stop or a restart); only then is a real query tried. pool_pre_ping's SELECT 1 was a round
    trip before every transaction, and under load each one waited for the GIL as well (vdi bench
    logon-storm).
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    try:
        readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        dbapi_connection.execute("SELECT 1")
    except Exception:
        return True
    return False


def _check_idle_connection(dbapi_connection, _record, _proxy) -> None:
    if _idle_connection_broken(dbapi_connection):
        # The pool throws this connection away and checks out (or makes) another.
        raise exc.DisconnectionError("the database closed this pooled connection")


def make_engine(url: str, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        # As many pooled connections as the executor has threads: past SQLAlchemy's default of 5 (+10
        # overflow) every transaction opened a new connection and ran the pragmas (vdi bench tunnel).
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=pool_size)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    event.listen(engine, "checkout", _check_idle_connection)
    return engine


class Database:
    """A process's handle on the database.

    `run(fn)` executes `fn(session)` in a worker thread inside one transaction, so handlers
    on the Tornado loop never block on I/O.
    """

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.url, settings.pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=settings.pool_size, thread_name_prefix="db")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    async def run(self, fn: Callable[[Session], T]) -> T:
        def work() -> T:
            with self.transaction() as session:
                return fn(session)

        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def run_statements(self, fn: Callable[[Connection], T]) -> asyncio.Future[T]:
        """As `run`, with a Core connection instead of an ORM session: for work that is a few prepared
        statements, where the session's own bookkeeping would cost more than the statements (the console
        token's claim: vdi bench tunnel). Returns the executor's future itself (awaited like `run`): no
        coroutine, so a caller that does not await at once needs no task to drive it."""

        def work() -> T:
            with self.engine.begin() as connection:
                return fn(connection)

        return asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self.engine.dispose()
