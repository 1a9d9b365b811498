"""Placement: filters drop hosts that cannot take the desktop, weighers rank the rest.

Modelled on Nova's scheduler: each filter answers one question, each weigher returns one raw
number that the engine normalises to [0, 1], multiplies and sums; the pick is random among the
best few so that concurrent requests do not all race for the same host. The claim that follows
is guarded by the host's generation number (optimistic concurrency).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.orm import Session

from broker.db.models import Host
from broker.placement.base import HostCandidate, HostFilter, HostWeigher, PlacementRequest
from broker.placement.filters.capacity import DesktopCapacityFilter
from broker.placement.filters.host_state import HostStateFilter
from broker.placement.weighers.free_slots import FreeSlotsWeigher

__all__ = [
    "HostCandidate",
    "PlacementDecision",
    "PlacementEngine",
    "PlacementRequest",
    "claim_host",
]

log = logging.getLogger("broker.placement")


@dataclass
class PlacementDecision:
    host: str | None
    explanation: list[str] = field(default_factory=list)
    reason: str = ""
    weights: dict[str, float] = field(default_factory=dict)


class PlacementEngine:
    def __init__(
        self, filters: Sequence[HostFilter], weighers: Sequence[HostWeigher], best_of: int = 3, rng=None
    ) -> None:
        self.filters = list(filters)
        self.weighers = list(weighers)
        self.best_of = max(best_of, 1)
        self._rng = rng or random.SystemRandom()

    @classmethod
    def default(cls) -> PlacementEngine:
        return cls([HostStateFilter(), DesktopCapacityFilter()], [FreeSlotsWeigher(1.0)])

    def select(self, hosts: Sequence[HostCandidate], request: PlacementRequest) -> PlacementDecision:
        decision = PlacementDecision(host=None)
        remaining = self._filter(list(hosts), request, decision)
        if not remaining:
            decision.reason = _no_host_reason(hosts, decision)
            log.info("placement for pool %s: no host (%s)", request.pool, decision.reason)
            return decision
        decision.weights = self._weigh(remaining, request)
        ranked = sorted(remaining, key=lambda h: decision.weights[h.name], reverse=True)
        top = ranked[: self.best_of]
        decision.host = self._rng.choice(top).name
        decision.explanation.append(
            "top candidates: " + ", ".join(f"{h.name}={decision.weights[h.name]:.3f}" for h in top)
        )
        log.info(
            "placement for pool %s: %s; %s", request.pool, decision.host, "; ".join(decision.explanation)
        )
        return decision

    def _filter(
        self, hosts: list[HostCandidate], request: PlacementRequest, decision: PlacementDecision
    ) -> list[HostCandidate]:
        for host_filter in self.filters:
            kept = [h for h in hosts if host_filter.host_passes(h, request)]
            dropped = [h.name for h in hosts if h not in kept]
            note = f"{host_filter.name}: kept {len(kept)} of {len(hosts)}"
            if dropped:
                note += f" (dropped as {host_filter.reason}: {', '.join(dropped[:10])}"
                note += f" and {len(dropped) - 10} more)" if len(dropped) > 10 else ")"
            decision.explanation.append(note)
            hosts = kept
            if not hosts:
                break
        return hosts

    def _weigh(self, hosts: list[HostCandidate], request: PlacementRequest) -> dict[str, float]:
        totals = dict.fromkeys((h.name for h in hosts), 0.0)
        for weigher in self.weighers:
            raw = {h.name: weigher.weigh(h, request) for h in hosts}
            low, high = min(raw.values()), max(raw.values())
            span = high - low
            for name, value in raw.items():
                normalised = (value - low) / span if span else 0.0
                totals[name] += weigher.multiplier * normalised
        return totals


def _no_host_reason(hosts: Sequence[HostCandidate], decision: PlacementDecision) -> str:
    if not hosts:
        return "no hypervisor hosts are configured"
    last = decision.explanation[-1] if decision.explanation else ""
    return f"no host can take the desktop: of {len(hosts)} host(s), {last}"


def claim_host(session: Session, host_name: str, generation: int) -> bool:
    """Take a slot on the host if nobody else has since we read it; False means retry placement."""
    result = session.execute(
        update(Host)
        .where(Host.name == host_name, Host.generation == generation)
        .values(generation=Host.generation + 1)
    )
    return result.rowcount == 1
