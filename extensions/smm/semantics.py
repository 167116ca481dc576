"""Meter semantics shared by every meter reader: the vocabulary (names, units, kinds),
primary values from VT/CT ratios, and plausibility (docs/DATA-MODEL.md).

Readers produce *secondary* values as the meter reports them, named with the vocabulary
(`U1`, `P`, `Ap`, `Ap_T1`, ...); `Meter.readings` turns them into the points of one device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extensions.sdk import PointSpec, Reading
from smx import vocabulary

__all__ = ["Meter", "Ratings", "Ratios", "scale_of", "unit_of"]

# The meter points of the vocabulary (smx/vocabulary.toml has their units and meanings):
# per-phase U I P Q S PF, f, and the energy indexes with tariff and billing forms.
_NAME = re.compile(r"(U|I|P|Q|S|PF)([123])?|f|(Ap|Am|Rp|Rm)(?:_T([1-9]))?(?:\.bill(\d\d))?")

# What scales with which transformer: voltages with the VT, currents with the CT, powers and
# energies with both; frequency and power factor with neither.
_SCALE = {
    "U": "vt",
    "I": "ct",
    "P": "both",
    "Q": "both",
    "S": "both",
    "Ap": "both",
    "Am": "both",
    "Rp": "both",
    "Rm": "both",
}

# Plausibility: how far above its ratings a meter may read before a value is taken for a
# decoding error (wrong register, word order, scale) and marked UNCERTAIN.
_MARGIN = 1.5


@dataclass(frozen=True)
class Ratings:
    """A meter's nominal ratings on its own terminals (secondary side), from its nameplate:
    the phase-to-neutral nominal voltage and the maximum current. Plausibility limits derive
    from them: |U| <= 1.5 Un, |I| <= 1.5 Imax per phase, powers within the product of the two
    per phase (three times that for a total), f within 45..65 Hz, |PF| <= 1."""

    u_nominal: float = 230.0
    i_max: float = 100.0

    def limit(self, point: str) -> tuple[float, float] | None:
        """(low, high) of a plausible secondary value of `point`; None: no limit."""
        m = _NAME.fullmatch(point)
        if m is None or m.group(1) is None:
            return (45.0, 65.0) if point == "f" else None
        base, phase = m.group(1), m.group(2)
        u, i = _MARGIN * self.u_nominal, _MARGIN * self.i_max
        phases = 1 if phase else 3
        if base == "U":
            return (0.0, u)
        if base == "I":
            return (-i * phases, i * phases)
        if base == "PF":
            return (-1.0001, 1.0001)
        return (-u * i * phases, u * i * phases)  # P, Q, S


def _base(point: str) -> str:
    m = _NAME.fullmatch(point)
    if m is None:
        raise ValueError(f"{point!r} is not a meter point of the vocabulary")
    return m.group(1) or m.group(3) or "f"


def unit_of(point: str) -> str:
    _base(point)  # only meter points
    return vocabulary.unit_of(point)


def scale_of(point: str) -> str:
    return _SCALE.get(_base(point), "none")


@dataclass(frozen=True)
class Ratios:
    """Instrument transformer ratios of a meter that measures through CTs/VTs."""

    ct: float = 1.0
    vt: float = 1.0

    def primary(self, point: str, value: float) -> float:
        how = scale_of(point)
        if how == "vt":
            return value * self.vt
        if how == "ct":
            return value * self.ct
        if how == "both":
            return value * self.ct * self.vt
        return value


@dataclass(frozen=True)
class Meter:
    """One meter as the site sees it: its device id, ratios, ratings and the index maximum."""

    device: str
    ratios: Ratios = Ratios()
    index_max: float = 0.0  # where the energy registers recirculate (0: unknown)
    period: float = 1.0
    ratings: Ratings = Ratings()

    def spec(self, point: str) -> PointSpec:
        base = _base(point)
        term = vocabulary.lookup(point)
        assert term is not None  # every meter point is a vocabulary name (tests/smx)
        unit, text = term.unit, term.description
        billing = vocabulary.is_billing_snapshot(point)
        return PointSpec(
            f"{self.device}/{point}",
            unit=unit,
            kind="double",
            # Billing snapshots change once a month: never STALE.
            period=None if billing else self.period * 1.5,
            description=text
            + (" (billing-period snapshot; source time = billing date)" if billing else ""),
            # Published values are primary: so is the recirculation point consumers need.
            index_max=self.ratios.primary(point, self.index_max)
            if base in ("Ap", "Am", "Rp", "Rm")
            else 0.0,
        )

    def readings(self, raw: Mapping[str, Any]) -> dict[str, Reading]:
        """Secondary readings by vocabulary name -> primary readings by full point name.
        A value may be a number or a `Reading` (to carry the meter's clock or a quality)."""
        out: dict[str, Reading] = {}
        for point, item in raw.items():
            reading = item if isinstance(item, Reading) else Reading(item)
            secondary = float(reading.value)
            value = self.ratios.primary(point, secondary)
            quality = reading.quality
            limit = self.ratings.limit(point)
            if limit is not None and not limit[0] <= secondary <= limit[1]:
                quality = "UNCERTAIN"
            if _base(point) in ("Ap", "Am", "Rp", "Rm") and (
                value < 0
                or (self.index_max and value > self.index_max * self.ratios.ct * self.ratios.vt)
            ):
                quality = "UNCERTAIN"
            out[f"{self.device}/{point}"] = Reading(value, quality, reading.source_time)
        return out
