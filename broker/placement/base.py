"""Placement building blocks: the host view the engine works on, filters and weighers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class HostCandidate:
    """What placement knows of a host at decision time (read from the database)."""

    name: str
    state: str
    max_desktops: int
    desktops: int
    generation: int

    @property
    def free_slots(self) -> int:
        return max(self.max_desktops - self.desktops, 0)


@dataclass(frozen=True)
class PlacementRequest:
    pool: str
    memory_mib: int = 256
    vcpus: int = 1


class HostFilter(ABC):
    """Answers one question about one host; `reason` says why a host was dropped."""

    name = "filter"
    reason = "rejected"

    @abstractmethod
    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool: ...


class HostWeigher(ABC):
    """Returns one raw number per host; the engine normalises and multiplies it."""

    name = "weigher"

    def __init__(self, multiplier: float = 1.0) -> None:
        self.multiplier = multiplier

    @abstractmethod
    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float: ...
