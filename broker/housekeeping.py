"""Housekeeping on the broker's loop: expired console tokens are deleted, so the table stays small.

A token lives at most 30 s, but its row is kept for an hour after expiry so that a late use is answered
"expired" rather than "unknown" (broker/db/tokens.py, PURGE_AFTER_S); after that it is only weight.
"""

from __future__ import annotations

import logging

from broker.background import PeriodicTask
from broker.db import Database
from broker.db.tokens import purge_expired
from monitoring.metrics import CONSOLE_TOKENS_PURGED

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 300.0


class TokenPurge(PeriodicTask):
    """Deletes console tokens that expired more than PURGE_AFTER_S ago, every few minutes."""

    name = "console-token-purge"

    def __init__(self, db: Database, interval_s: float = PASS_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.db = db

    async def run_once(self) -> int:
        purged = await self.db.run(purge_expired)
        if purged:
            CONSOLE_TOKENS_PURGED.inc(purged)
            log.info("purged %d expired console token(s)", purged)
        return purged
