"""Placement: filters drop hosts that cannot take the desktop, weighers rank the rest.

Modelled on Nova's scheduler: each filter answers one question, each weigher returns one raw
number that the engine normalises to [0, 1], multiplies and sums; the pick is random among the
best few so that concurrent requests do not all race for the same host. The claim that follows
(broker.placement.claim) is guarded by the host's generation number (optimistic concurrency)
and re-checks capacity in the same transaction.

Every decision explains itself: which filter dropped which hosts, and the weights of the top
candidates; "no capacity" names the reasons ("all 3 hosts in zone business are full").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence

import numpy as np

from broker.placement.base import HostCandidate, HostFilter, HostWeigher, PlacementRequest
from broker.placement.claim import claim_host
from broker.placement.config import PlacementSettings
from broker.placement.decision import FilterStep, PlacementDecision
from broker.placement.filters import FILTERS
from broker.placement.filters.capacity import DesktopCapacityFilter
from broker.placement.filters.host_state import HostStateFilter
from broker.placement.table import HostTable
from broker.placement.weighers import WEIGHERS
from broker.placement.weighers.free_slots import FreeSlotsWeigher
from monitoring.metrics import PLACEMENT_DURATION, PLACEMENTS, PlacementReason, PlacementResult

__all__ = [
    "HostCandidate",
    "HostTable",
    "PlacementDecision",
    "PlacementEngine",
    "PlacementRequest",
    "claim_host",
]

log = logging.getLogger("broker.placement")
NAMED_IN_REASON = 3


class PlacementEngine:
    def __init__(
        self, filters: Sequence[HostFilter], weighers: Sequence[HostWeigher], best_of: int = 3, rng=None
    ) -> None:
        self.filters = list(filters)
        self.weighers = [w for w in weighers if w.multiplier]
        self.best_of = max(best_of, 1)
        self._rng = rng or random.SystemRandom()

    @classmethod
    def default(cls) -> PlacementEngine:
        return cls([HostStateFilter(), DesktopCapacityFilter()], [FreeSlotsWeigher(1.0)])

    @classmethod
    def from_settings(cls, settings: PlacementSettings, rng=None) -> PlacementEngine:
        filters = [FILTERS[name]() for name in settings.filters]
        weighers = [WEIGHERS[name](multiplier) for name, multiplier in settings.weighers.items()]
        return cls(filters, weighers, settings.best_of, rng)

    def select(
        self,
        hosts: Sequence[HostCandidate] | HostTable,
        request: PlacementRequest,
        exclude: np.ndarray | None = None,
    ) -> PlacementDecision:
        """Decide where the request goes. `exclude` marks rows of a HostTable not to consider at all."""
        started = time.perf_counter()
        decision = self._decide(as_table(hosts), request, exclude)
        decision.duration_s = time.perf_counter() - started
        PLACEMENT_DURATION.observe(decision.duration_s)
        result, reason = _outcome(decision, bool(len(hosts)))
        PLACEMENTS.labels(result=result.value, reason=reason.value).inc()
        return decision

    def explain(
        self, hosts: Sequence[HostCandidate] | HostTable, request: PlacementRequest
    ) -> PlacementDecision:
        """The decision the engine would take now, without counting it in the metrics."""
        return self._decide(as_table(hosts), request, None)

    def refusal(self, host: HostCandidate, request: PlacementRequest) -> str | None:
        """The first filter that drops this one host for the request, by name; None if every one keeps it.

        The claim asks this about the host as it finds it under its lock (broker/placement/claim.py), so
        a decision taken on older figures lands only where the decision would still be allowed now.
        """
        for host_filter in self.filters:
            if host_filter.applies(request) and not host_filter.host_passes(host, request):
                return host_filter.name
        return None

    def _decide(
        self, table: HostTable, request: PlacementRequest, exclude: np.ndarray | None
    ) -> PlacementDecision:
        decision = PlacementDecision(host=None)
        alive = np.ones(len(table), dtype=bool) if exclude is None else ~exclude
        considered = int(alive.sum())
        alive = self._filter(table, alive, request, decision)
        decision.explanation = [step.describe() for step in decision.steps]
        rows = np.flatnonzero(alive)
        if not len(rows):
            decision.reason = no_host_reason(considered, request, decision)
            log.info("placement for pool %s: no host (%s)", request.pool, decision.reason)
            return decision
        totals = self._weigh(table, rows, request)
        decision.set_weights(table.names[rows], totals)
        best = min(self.best_of, len(rows))
        top = np.argpartition(-totals, best - 1)[:best] if best < len(rows) else np.arange(len(rows))
        top = top[np.argsort(-totals[top], kind="stable")]
        decision.top = [(table.hosts[rows[i]].name, float(totals[i])) for i in top]
        # Hosts weighed exactly like the last of the best are as good: the pick is among all of them.
        # Without this, equal hosts ranked by their order in the table, so every broker's first choices
        # were the same few hosts, and the brokers lost claim after claim to each other there.
        tied = np.flatnonzero(totals >= totals[top[-1]])
        if len(tied) > len(top):
            decision.host = table.hosts[rows[tied[self._rng.randrange(len(tied))]]].name
        else:
            decision.host = self._rng.choice(decision.top)[0]
        decision.explanation.append(
            "top candidates: " + ", ".join(f"{name}={weight:.3f}" for name, weight in decision.top)
        )
        log.info(
            "placement for pool %s: %s; %s", request.pool, decision.host, "; ".join(decision.explanation)
        )
        return decision

    def _filter(
        self, table: HostTable, alive: np.ndarray, request: PlacementRequest, decision: PlacementDecision
    ) -> np.ndarray:
        for host_filter in self.filters:
            if not host_filter.applies(request):
                continue
            kept = alive & host_filter.mask(table, request)
            dropped = table.names[alive & ~kept].tolist()
            alive = kept
            decision.steps.append(FilterStep(host_filter.name, host_filter.reason, int(kept.sum()), dropped))
            if not alive.any():
                decision.blocked_by = host_filter.name
                break
        return alive

    def _weigh(self, table: HostTable, rows: np.ndarray, request: PlacementRequest) -> np.ndarray:
        totals = np.zeros(len(rows))
        for weigher in self.weighers:
            raw = weigher.weigh_array(table, request)[rows]
            low, high = raw.min(), raw.max()
            if high == low:
                continue  # every host scores the same: this weigher cannot tell them apart
            totals += (raw - low) * (weigher.multiplier / (high - low))
        return totals


def as_table(hosts: Sequence[HostCandidate] | HostTable) -> HostTable:
    return hosts if isinstance(hosts, HostTable) else HostTable(hosts)


def _outcome(decision: PlacementDecision, any_hosts: bool) -> tuple[PlacementResult, PlacementReason]:
    if decision.host is not None:
        return PlacementResult.PLACED, PlacementReason.NONE
    if not any_hosts:
        return PlacementResult.NO_HOST, PlacementReason.NO_HOSTS
    known = {reason.value: reason for reason in PlacementReason}
    return PlacementResult.NO_HOST, known.get(decision.blocked_by, PlacementReason.OTHER)


def _hosts(count: int) -> str:
    return f"{count} host" if count == 1 else f"{count} hosts"


def no_host_reason(total: int, request: PlacementRequest, decision: PlacementDecision) -> str:
    """Why nothing is left, in words: the last filter first, then what the others dropped."""
    if total == 0:
        return "no hypervisor hosts are registered"
    last = decision.steps[-1]
    scope = request.scope() if any(step.filter == "labels" for step in decision.steps[:-1]) else ""
    count = len(last.dropped)
    if count == 1:
        reason = f"the only host{scope}, {last.dropped[0]}, is {last.reason}"
    else:
        reason = f"all {count} hosts{scope} are {last.reason}"
        reason += f" ({', '.join(last.dropped)})" if count <= NAMED_IN_REASON else ""
    earlier = [f"{_hosts(len(step.dropped))} {step.reason}" for step in decision.steps[:-1] if step.dropped]
    return reason + (f"; also {'; '.join(earlier)}" if earlier else "")
