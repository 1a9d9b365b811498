"""Placement building blocks: the host view the engine works on, filters and weighers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from broker.placement.table import HostTable

HEALTH_STATES = ("up", "down")
ADMIN_STATES = ("enabled", "disabled", "draining")


@dataclass(frozen=True)
class HostCandidate:
    """What placement knows of a host at decision time (read from the database).

    `vcpus`/`memory_mib` are the physical capacity (None: unknown, only `max_desktops` limits);
    the `*_used` figures sum the host's desktops that still hold resources.
    """

    name: str
    state: str
    max_desktops: int
    desktops: int
    generation: int
    admin_state: str = "enabled"
    labels: dict = field(default_factory=dict)
    vcpus: int | None = None
    memory_mib: int | None = None
    cpu_ratio: float = 4.0
    ram_ratio: float = 1.0
    vcpus_used: int = 0
    memory_used_mib: int = 0
    cpu_load: float | None = None
    images: frozenset = frozenset()
    pool_desktops: dict = field(default_factory=dict)

    # Derived once per host version (placement reads them for every host in every decision).
    vcpu_limit: float | None = field(init=False, repr=False, compare=False)
    memory_limit_mib: float | None = field(init=False, repr=False, compare=False)
    free_memory_mib: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vcpu_limit = None if self.vcpus is None else self.vcpus * self.cpu_ratio
        memory_limit = None if self.memory_mib is None else self.memory_mib * self.ram_ratio
        object.__setattr__(self, "vcpu_limit", vcpu_limit)
        object.__setattr__(self, "memory_limit_mib", memory_limit)
        free_memory = 0.0 if memory_limit is None else memory_limit - self.memory_used_mib
        object.__setattr__(self, "free_memory_mib", free_memory)

    @property
    def free_slots(self) -> int:
        return max(self.max_desktops - self.desktops, 0)

    def fits(self, vcpus: int, memory_mib: int) -> bool:
        """Room for one more desktop of this size, counting overcommit."""
        if self.desktops + 1 > self.max_desktops:
            return False
        vcpu_limit, memory_limit = self.vcpu_limit, self.memory_limit_mib
        if vcpu_limit is not None and self.vcpus_used + vcpus > vcpu_limit:
            return False
        return memory_limit is None or self.memory_used_mib + memory_mib <= memory_limit


@dataclass(frozen=True)
class PlacementRequest:
    pool: str
    memory_mib: int = 256
    vcpus: int = 1
    image: str = ""  # "name:version" of the pool's image
    zone: str | None = None
    site: str | None = None
    required_labels: tuple[tuple[str, str], ...] = ()
    max_per_host: int | None = None

    def scope(self) -> str:
        """Where the request may go, in words, for "no capacity" reasons: " in zone business"."""
        parts = [f"{key} {value}" for key, value in (("zone", self.zone), ("site", self.site)) if value]
        parts += [f"{key}={value}" for key, value in self.required_labels]
        return f" in {', '.join(parts)}" if parts else ""


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
