"""Console token claims, gathered: the tokens that arrive while a claim is running are claimed together.

Each claim is a transaction on a worker thread of the database (broker/db/tokens.py): the hop to the
thread and back, the transaction's begin and commit and the futures around them cost more of the gateway's
CPU than the statements (vdi bench tunnel, new tunnels: about a sixth of each tunnel). One claim runs at a
time; the tokens that came in meanwhile go together in the next one, in one transaction, each with its
own answer (consume_tokens). A console alone waits for nothing more than before; fifty at once share a
handful of transactions.

The single use holds as it did: every token is claimed by its own conditional UPDATE in the shared
database, a refused token costs no write, and a refusal of one token does not touch the others' claims.
A database error fails every console of that transaction (each is closed as "console service
unavailable", as a lone claim's error was), and leaves their tokens unused.
"""

from __future__ import annotations

import asyncio

from broker.db import Database
from broker.db.tokens import TOKEN_SHAPE, ConsoleTarget, TokenRefused, consume_tokens

# Tokens claimed in one transaction at most (a storm's later tokens go in the next one).
MAX_BATCH = 64


class TokenClaims:
    """The gateway's claims of console tokens, one transaction at a time (see the module's docstring)."""

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[ConsoleTarget]]] = []
        self._running = False

    async def consume(self, token: str | None) -> ConsoleTarget:
        """The token's target once claimed; raises TokenRefused (a malformed token without asking the
        database) or the database's error."""
        if not token or not TOKEN_SHAPE.match(token):
            raise TokenRefused("missing or malformed console token")
        claimed: asyncio.Future[ConsoleTarget] = asyncio.get_running_loop().create_future()
        self._waiting.append((token, claimed))
        if not self._running:
            self._running = True
            self._next()
        return await claimed

    def _next(self) -> None:
        """Start the transaction of the tokens waiting now: at once for a claim when none runs, else once
        the running one is over, so that what came in meanwhile goes together."""
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        if not batch:
            self._running = False
            return
        tokens = [token for token, _ in batch]
        done = asyncio.ensure_future(
            self.db.run_statements(lambda connection: consume_tokens(connection, tokens))
        )
        done.add_done_callback(lambda finished: self._answer(batch, finished))

    def _answer(
        self, batch: list[tuple[str, asyncio.Future[ConsoleTarget]]], finished: asyncio.Future
    ) -> None:
        try:
            if finished.cancelled():
                answers: list = [None] * len(batch)
            elif finished.exception() is not None:
                answers = [finished.exception()] * len(batch)
            else:
                answers = finished.result()
            for (_, claimed), answer in zip(batch, answers, strict=True):
                if claimed.done():  # the console gave up waiting (its task was cancelled)
                    continue
                if answer is None:
                    claimed.cancel()
                elif isinstance(answer, BaseException):
                    claimed.set_exception(answer)
                else:
                    claimed.set_result(answer)
        finally:
            self._next()
