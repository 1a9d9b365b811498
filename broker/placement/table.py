"""A columnar view of the host candidates: what filters and weighers compute on, as NumPy arrays.

At a thousand hosts a decision that walks HostCandidate objects in Python spends milliseconds in
attribute lookups; the same questions asked of arrays take microseconds. The table is built once
from the candidates (HostCatalog keeps one between decisions and updates the row of a host it
claimed), and answers the per-request questions that need Python objects (labels, images,
desktops per pool) from caches keyed by the request's values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from broker.placement.candidates import HostCandidate


def _limit(value: float | None) -> float:
    return math.inf if value is None else float(value)


class HostTable:
    """The candidates in order, plus one array per figure placement reads (row i is hosts[i])."""

    def __init__(self, hosts: Sequence[HostCandidate]) -> None:
        self.hosts: list[HostCandidate] = list(hosts)
        self.index: dict[str, int] = {host.name: row for row, host in enumerate(self.hosts)}
        self.names = np.array([host.name for host in self.hosts], dtype=object)
        hosts = self.hosts
        self.usable = np.array([h.state == "up" and h.admin_state == "enabled" for h in hosts], dtype=bool)
        self.desktops = np.array([h.desktops for h in hosts], dtype=np.int64)
        self.max_desktops = np.array([h.max_desktops for h in hosts], dtype=np.int64)
        self.vcpus_used = np.array([h.vcpus_used for h in hosts], dtype=np.float64)
        # An unknown size (no override, not reported) is an infinite limit: only slots count.
        self.vcpu_limit = np.array([_limit(h.vcpu_limit) for h in hosts], dtype=np.float64)
        self.memory_used = np.array([h.memory_used_mib for h in hosts], dtype=np.float64)
        self.memory_limit = np.array([_limit(h.memory_limit_mib) for h in hosts], dtype=np.float64)
        self.free_memory = np.array([h.free_memory_mib for h in hosts], dtype=np.float64)
        self.cpu_load = np.array([h.cpu_load or 0.0 for h in hosts], dtype=np.float64)
        # Per-request answers that need the Python objects, kept until a row changes.
        self._masks: dict[Hashable, np.ndarray] = {}
        self._mask_rules: dict[Hashable, Callable[[HostCandidate], bool]] = {}
        self._pool_counts: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.hosts)

    def _set_figures(self, row: int, host: HostCandidate) -> None:
        self.usable[row] = host.state == "up" and host.admin_state == "enabled"
        self.desktops[row] = host.desktops
        self.max_desktops[row] = host.max_desktops
        self.vcpus_used[row] = host.vcpus_used
        self.vcpu_limit[row] = _limit(host.vcpu_limit)
        self.memory_used[row] = host.memory_used_mib
        self.memory_limit[row] = _limit(host.memory_limit_mib)
        self.free_memory[row] = host.free_memory_mib
        self.cpu_load[row] = host.cpu_load or 0.0

    def put(self, host: HostCandidate) -> None:
        """Replace the row of a known host whose figures changed; KeyError for a host not in the table."""
        row = self.index[host.name]
        self.hosts[row] = host
        self._set_figures(row, host)
        for key, rule in self._mask_rules.items():
            self._masks[key][row] = rule(host)
        for pool, counts in self._pool_counts.items():
            counts[row] = host.pool_desktops.get(pool, 0)

    def mask(self, key: Hashable, rule: Callable[[HostCandidate], bool]) -> np.ndarray:
        """rule(host) for every host, computed once per key and kept current by `put`."""
        cached = self._masks.get(key)
        if cached is None:
            cached = np.fromiter((rule(host) for host in self.hosts), dtype=bool, count=len(self.hosts))
            self._masks[key] = cached
            self._mask_rules[key] = rule
        return cached

    def pool_desktops(self, pool: str) -> np.ndarray:
        """How many desktops of the pool each host holds."""
        counts = self._pool_counts.get(pool)
        if counts is None:
            counts = np.fromiter(
                (host.pool_desktops.get(pool, 0) for host in self.hosts),
                dtype=np.int64,
                count=len(self.hosts),
            )
            self._pool_counts[pool] = counts
        return counts
