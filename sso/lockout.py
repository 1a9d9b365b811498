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


# -- reservations: a guess is counted before the secret is checked ------------------------------------
#
# Counting after the check let parallel requests race: forty wrong passwords sent at once all passed the
# lock check before the first failure was counted, and all forty reached the directory. Now each attempt
# takes one of the window's places first (under the counter's row lock), so at most the limit of guesses
# are ever checked; a success gives its place back.


def _window_wait(counter: Counter, settings: LockoutSettings, now: dt.datetime) -> int:
    ends = counter.window_started_at + dt.timedelta(seconds=settings.window_s)
    return max(1, math.ceil((ends - now).total_seconds()))


def reserve_attempt(counter: Counter, kind: str, settings: LockoutSettings, now: dt.datetime) -> int:
    """Take one attempt of the counter's window: 0 when taken, else the seconds until one is free."""
    wait = seconds_locked(counter, now)
    if wait:
        return wait
    if counter.locked_until is not None or now - counter.window_started_at > dt.timedelta(
        seconds=settings.window_s
    ):
        # The lock ran out, or the window did: a fresh window starts with this attempt.
        counter.failures, counter.window_started_at, counter.locked_until = 0, now, None
    if (counter.failures or 0) >= limit_for(kind, settings):
        return _window_wait(counter, settings, now)  # every place is taken by attempts still being checked
    counter.failures = (counter.failures or 0) + 1
    return 0


def release_attempt(counter: Counter) -> None:
    """Give a reserved attempt back: it was no guess (right secret, or the directory did not answer)."""
    counter.failures = max((counter.failures or 0) - 1, 0)


def settle_failure(counter: Counter, kind: str, settings: LockoutSettings, now: dt.datetime) -> bool:
    """A reserved attempt failed and stays counted; lock when the window is used up. True: locked now."""
    if (counter.failures or 0) >= limit_for(kind, settings) and not seconds_locked(counter, now):
        counter.locked_until = now + dt.timedelta(seconds=settings.lock_s)
        return True
    return False
