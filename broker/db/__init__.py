"""Database access: one engine per process, blocking work kept off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from broker.db.config import DatabaseSettings

T = TypeVar("T")


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


def make_engine(url: str, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        # As many pooled connections as the executor has threads: past SQLAlchemy's default of 5 (+10
        # overflow) every transaction opened a new connection and ran the pragmas (vdi bench tunnel).
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=pool_size)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True)


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

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self.engine.dispose()
