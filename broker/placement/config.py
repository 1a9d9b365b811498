"""Settings of placement: which filters run, weigher multipliers, the random pick, label rules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_WEIGHERS = {"free_ram": 1.0, "cpu_load": 0.5, "desktop_count": 1.0, "image_cached": 0.5}
DEFAULT_FILTERS = ["host_state", "desktop_kind", "labels", "network_zone", "anti_affinity", "capacity"]
# Zones are never mixed (docs/centers.md): a list of filters without this one is refused.
REQUIRED_FILTERS = ("network_zone",)


class PlacementSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filters: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FILTERS),
        description="host filters in the order they run (host_state, desktop_kind, labels, network_zone, "
        "anti_affinity, capacity); network_zone cannot be left out",
    )
    weighers: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHERS),
        description="weigher name → multiplier (free_ram, cpu_load, desktop_count, free_slots, "
        "image_cached); a negative multiplier packs instead of spreading",
    )
    best_of: int = Field(3, ge=1, le=100, description="pick at random among this many best-weighed hosts")
    claim_attempts: int = Field(
        8, ge=1, le=20, description="placements tried when claims are lost to concurrent requests"
    )
    catalog_max_age_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="seconds the broker places from host figures it keeps before reading every host "
        "again (a lost claim re-reads that host at once, and nothing fitting re-reads all)",
    )
    label_keys: list[str] = Field(
        default_factory=lambda: ["site", "zone", "gpu"],
        description="host label keys always allowed; others must be listed here unless "
        "`free_form_labels` is on",
    )
    free_form_labels: bool = Field(
        True, description="also allow any label key matching ^[a-z][a-z0-9_-]{0,31}$"
    )

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: list[str]) -> list[str]:
        from broker.placement.filters import FILTERS

        unknown = [name for name in value if name not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filter {unknown[0]!r} (known: {', '.join(FILTERS)})")
        missing = [name for name in REQUIRED_FILTERS if name not in value]
        if missing:
            raise ValueError(f"{missing[0]!r} must stay in the list: placement never mixes network zones")
        return value

    @field_validator("weighers")
    @classmethod
    def _known_weighers(cls, value: dict[str, float]) -> dict[str, float]:
        from broker.placement.weighers import WEIGHERS

        unknown = [name for name in value if name not in WEIGHERS]
        if unknown:
            raise ValueError(f"unknown weigher {unknown[0]!r} (known: {', '.join(WEIGHERS)})")
        return value
