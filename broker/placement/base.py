"""Placement plugin contracts: a filter answers one question per host, a weigher returns one number."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from broker.placement.candidates import HostCandidate, PlacementRequest
from broker.placement.table import HostTable

__all__ = ["HostCandidate", "HostFilter", "HostWeigher", "PlacementRequest"]


class HostFilter(ABC):
    """Answers one question about one host; `reason` says why a host was dropped.

    `mask` is what the engine calls: the answer for every host of a HostTable at once. The
    default asks `host_passes` host by host; filters override it with array arithmetic, since a
    thousand method calls per decision cost more than the question itself.
    """

    name = "filter"
    reason = "rejected"

    @abstractmethod
    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool: ...

    def applies(self, request: PlacementRequest) -> bool:
        """False when the filter cannot drop any host for this request (nothing asked of it)."""
        return True

    def mask(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        passes = self.host_passes
        return np.fromiter((passes(host, request) for host in table.hosts), dtype=bool, count=len(table))


class HostWeigher(ABC):
    """Returns one raw number per host; the engine normalises and multiplies it.

    `weigh_array` is what the engine calls (every host of a HostTable at once); as with filters,
    the default asks `weigh` host by host and weighers override it with array arithmetic.
    """

    name = "weigher"

    def __init__(self, multiplier: float = 1.0) -> None:
        self.multiplier = multiplier

    @abstractmethod
    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float: ...

    def weigh_array(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        weigh = self.weigh
        return np.fromiter((weigh(host, request) for host in table.hosts), dtype=np.float64, count=len(table))
