"""Entitlement: which desktop pools a user may use, decided by directory groups alone.

Pure functions over anything with `.name` and `.groups` (PoolSettings, the Pool model), so
the decision is the same wherever it is asked and can be tested without a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from broker.errors import NotEntitled


class PoolLike(Protocol):
    name: str
    groups: list[str]


P = TypeVar("P", bound=PoolLike)


def _normalise(groups: Iterable[str]) -> set[str]:
    # Directory group names compare case-insensitively (LDAP's default matching rule for cn).
    return {group.strip().casefold() for group in groups if group and group.strip()}


def matching_groups(pool: PoolLike, groups: Iterable[str]) -> set[str]:
    return _normalise(pool.groups) & _normalise(groups)


def is_entitled(pool: PoolLike, groups: Iterable[str]) -> bool:
    return bool(matching_groups(pool, groups))


def entitled_pools(pools: Iterable[P], groups: Iterable[str]) -> list[P]:
    """The pools any of `groups` is entitled to, in the order given."""
    groups = list(groups)
    return [pool for pool in pools if is_entitled(pool, groups)]


def check_entitled(pool: PoolLike, groups: Iterable[str]) -> None:
    """Raise NotEntitled (403) unless one of `groups` is entitled to `pool`.

    The message explains the denial (principle 3) without listing the user's own groups.
    """
    if not is_entitled(pool, groups):
        raise NotEntitled(
            f"You are not entitled to pool {pool.name}: it is assigned to other groups.", pool=pool.name
        )
