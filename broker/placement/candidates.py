"""What placement decides about: the hosts as read from the database, and the request for one desktop."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    runs_sessions: bool = False  # a session host (its provider starts user sessions, not VMs from images)

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
    # The pool's network zone (business unless it says internet): placement never mixes zones.
    network_zone: str = "business"
    sessions: bool = False  # a session or app pool: its desktops are user sessions on session hosts

    def scope(self) -> str:
        """Where the request may go, in words, for "no capacity" reasons: " in zone business"."""
        parts = [f"{key} {value}" for key, value in (("zone", self.zone), ("site", self.site)) if value]
        parts += [f"{key}={value}" for key, value in self.required_labels]
        return f" in {', '.join(parts)}" if parts else ""
