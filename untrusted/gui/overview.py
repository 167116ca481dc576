"""The site at a glance: grid, PV, battery, EV charging and the house, each as a power in W with
its sign said in words (load reference, docs/DATA-MODEL.md: P > 0 into what is metered)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from smx.names import GlobSet
from smx.sdk import PointUpdate

from .settings import OverviewConfig

__all__ = ["Part", "overview", "power_words"]

# Worst last: a sum is as trustworthy as its worst part.
QUALITY_ORDER = ["GOOD", "DERIVED", "UNCERTAIN", "BAD", "STALE"]
IDLE_W = 10.0  # below this a flow is shown as none (standby, meter noise)

# (P > 0, P < 0, neither) for each part.
WORDS = {
    "grid": ("importing {} from the grid", "exporting {} to the grid", "no exchange with the grid"),
    "pv": ("drawing {} (standby)", "producing {}", "not producing"),
    "battery": ("charging {}", "discharging {}", "idle"),
    "ev": ("charging {}", "feeding back {}", "not charging"),
    "house": ("using {}", "supplying {} (check the meters)", "using nothing"),
}
LABELS = {"grid": "Grid", "pv": "PV", "battery": "Battery", "ev": "EV charging", "house": "House"}


@dataclasses.dataclass(frozen=True)
class Part:
    key: str
    watts: float | None  # None: no point of this part has a value
    quality: str  # the worst of its points'; "ABSENT" when it has none
    time: float  # the newest source time of its points (unix s), 0 when absent
    points: tuple[str, ...]
    soc: float | None = None  # battery only, %
    soc_quality: str = "ABSENT"

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": LABELS[self.key],
            "watts": self.watts,
            "words": power_words(self.key, self.watts),
            "quality": self.quality,
            "time": self.time,
            "points": list(self.points),
            "soc": self.soc,
            "soc_quality": self.soc_quality,
        }


def overview(cfg: OverviewConfig, latest: Mapping[str, PointUpdate]) -> list[Part]:
    parts = {key: _sum(key, getattr(cfg, key), latest) for key in ("grid", "pv", "battery", "ev")}
    soc = _sum("soc", cfg.soc, latest)
    if soc.watts is not None:
        # Two batteries: their mean charge state is the best one number without capacities.
        n = len(soc.points)
        parts["battery"] = dataclasses.replace(
            parts["battery"], soc=soc.watts / n, soc_quality=soc.quality
        )
    return [*parts.values(), _house(parts)]


def power_words(key: str, watts: float | None) -> str:
    if watts is None:
        return "no value"
    positive, negative, idle = WORDS[key]
    if abs(watts) < IDLE_W:
        return idle
    return (positive if watts > 0 else negative).format(_power(abs(watts)))


def _power(watts: float) -> str:
    return f"{watts / 1000:.1f} kW" if watts >= 1000 else f"{watts:.0f} W"


def _sum(key: str, patterns: list[str], latest: Mapping[str, PointUpdate]) -> Part:
    globs = GlobSet(patterns)
    found = [
        p for name, p in sorted(latest.items()) if globs.match(name) and _number(p) is not None
    ]
    if not found:
        return Part(key, None, "ABSENT", 0.0, ())
    return Part(
        key,
        sum(_number(p) or 0.0 for p in found),
        _worst(p.quality for p in found),
        max(p.source_time for p in found),
        tuple(p.name for p in found),
    )


def _house(parts: dict[str, Part]) -> Part:
    """What the house draws: the grid's import less what goes into the battery, the EVs and
    the PV (P_PV < 0 producing, so producing adds to the house's supply)."""
    grid = parts["grid"]
    if grid.watts is None:
        return Part("house", None, "ABSENT", 0.0, ())
    present = [p for p in parts.values() if p.watts is not None]
    watts = grid.watts - sum(p.watts or 0.0 for p in present if p is not grid)
    quality = _worst(p.quality for p in present)
    return Part(
        "house",
        watts,
        "DERIVED" if quality == "GOOD" else quality,
        max(p.time for p in present),
        tuple(n for p in present for n in p.points),
    )


def _number(p: PointUpdate) -> float | None:
    v = p.value
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _worst(qualities: Any) -> str:
    known = [q if q in QUALITY_ORDER else "UNCERTAIN" for q in qualities]
    return max(known, key=QUALITY_ORDER.index) if known else "ABSENT"
