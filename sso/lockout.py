"""Guessing resistance: count failed logins per user name and per source address, lock at a limit.

The policy only; the broker keeps the counters in its database so that every broker process sees the
same ones. A counter is anything with `failures`, `window_started_at` and `locked_until` (the broker's
LoginThrottle rows). Unknown user names are counted exactly like known ones, so a lock says nothing
about whether an account exists (enumeration).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Protocol

from sso.config import LockoutSettings

USER = "user"
SOURCE = "source"


class Counter(Protocol):
    failures: int
    window_started_at: dt.datetime
    locked_until: dt.datetime | None


def normalize_username(username: str) -> str:
    """Directory user names match case-insensitively (uid is caseIgnoreMatch): count them that way."""
    return (username or "").strip().casefold()[:256]


def limit_for(kind: str, settings: LockoutSettings) -> int:
    return settings.user_max_failures if kind == USER else settings.source_max_failures


def seconds_locked(counter: Counter | None, now: dt.datetime) -> int:
    """Whole seconds the counter stays locked (0: not locked); rounded up for Retry-After."""
    if counter is None or counter.locked_until is None or counter.locked_until <= now:
        return 0
    return max(1, math.ceil((counter.locked_until - now).total_seconds()))


def record_failure(counter: Counter, kind: str, settings: LockoutSettings, now: dt.datetime) -> bool:
    """Count one failure; return True when this failure locks the counter."""
    if now - counter.window_started_at > dt.timedelta(seconds=settings.window_s):
        # A fixed window restarted at the first failure after it ran out: simple, and the lock
        # itself (not the window) is what slows a guesser down.
        counter.failures, counter.window_started_at = 0, now
    counter.failures = (counter.failures or 0) + 1
    if counter.failures >= limit_for(kind, settings) and seconds_locked(counter, now) == 0:
        counter.locked_until = now + dt.timedelta(seconds=settings.lock_s)
        counter.failures, counter.window_started_at = 0, now
        return True
    return False
