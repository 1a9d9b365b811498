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
# Logins being checked from one address on a center terminal network (not a lock: a cap on parallelism).
IN_FLIGHT = "in_flight"
# Retry-After of a login refused because its center address has the cap of logins in flight: those end
# within a directory timeout or two (ldap.timeout_s, 2 s by default).
IN_FLIGHT_RETRY_S = 5


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


# -- center addresses: in flight is not failed ----------------------------------------------------------
#
# All terminals of a smart work center may reach the broker through one NAT address, and at opening time
# more of them log in at once than the address has places: counted in flight, right passwords still being
# checked filled the window and the next logins were refused although nobody had failed. From an address on
# a registered center terminal network only completed failures count in the address's window
# (center_source_max_failures); attempts in flight take a place in a separate cap instead
# (center_source_max_in_flight), and the per-user reservation is unchanged.


def _window_over(counter: Counter, settings: LockoutSettings, now: dt.datetime) -> bool:
    return now - counter.window_started_at > dt.timedelta(seconds=settings.window_s)


def reserve_in_flight(counter: Counter, settings: LockoutSettings, now: dt.datetime) -> int:
    """Take a place among the center address's logins in flight: 0 when taken, else the seconds to wait.

    The count restarts with the window, so places of attempts whose broker died before giving them back
    are free again after window_s at the latest (attempts in flight across that moment are forgotten too:
    for a moment up to twice the cap may be checked).
    """
    if _window_over(counter, settings, now):
        counter.failures, counter.window_started_at = 0, now
    if (counter.failures or 0) >= settings.center_source_max_in_flight:
        return IN_FLIGHT_RETRY_S
    counter.failures = (counter.failures or 0) + 1
    return 0


def record_failure(counter: Counter, settings: LockoutSettings, now: dt.datetime) -> bool:
    """A completed failure from a center address: count it in the address's window (no place was reserved
    there) and lock at center_source_max_failures. True: locked now."""
    if seconds_locked(counter, now):
        return False
    if counter.locked_until is not None or _window_over(counter, settings, now):
        counter.failures, counter.window_started_at, counter.locked_until = 0, now, None
    counter.failures = (counter.failures or 0) + 1
    if counter.failures >= settings.center_source_max_failures:
        counter.locked_until = now + dt.timedelta(seconds=settings.lock_s)
        return True
    return False
