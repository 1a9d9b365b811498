"""A placement decision: the chosen host, or why there is none, with every filter's step for the explain API."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NAMES_SHOWN = 10


@dataclass
class FilterStep:
    filter: str
    reason: str
    kept: int
    dropped: list[str]

    def describe(self) -> str:
        note = f"{self.filter}: kept {self.kept} of {self.kept + len(self.dropped)}"
        if self.dropped:
            more = len(self.dropped) - NAMES_SHOWN
            names = ", ".join(self.dropped[:NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
            note += f" (dropped as {self.reason}: {names})"
        return note

    def as_json(self) -> dict:
        return {"filter": self.filter, "reason": self.reason, "kept": self.kept, "dropped": self.dropped}


@dataclass
class PlacementDecision:
    host: str | None
    explanation: list[str] = field(default_factory=list)
    reason: str = ""
    steps: list[FilterStep] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)
    blocked_by: str = ""  # the filter that removed the last hosts, when none is left
    duration_s: float = 0.0  # the engine's own time: filtering and weighing
    _weighed: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def set_weights(self, names: np.ndarray, totals: np.ndarray) -> None:
        self._weighed = (names, totals)

    @property
    def weights(self) -> dict[str, float]:
        """Weight of every host left after the filters (built on demand: a decision needs only the top)."""
        if self._weighed is None:
            return {}
        names, totals = self._weighed
        return dict(zip(names.tolist(), totals.tolist(), strict=True))

    def as_json(self) -> dict:
        return {
            "host": self.host,
            "reason": self.reason or None,
            "filters": [step.as_json() for step in self.steps],
            "top_candidates": [{"host": name, "weight": round(w, 6)} for name, w in self.top],
            "explanation": self.explanation,
        }
