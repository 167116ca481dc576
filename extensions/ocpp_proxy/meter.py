"""OCPP sampled values to SMX points (docs/DATA-MODEL.md): SI units of the vocabulary, load
reference (an EV charging draws P > 0, as OCPP's *.Import measurands already say).

| OCPP measurand (phase)                | point         | unit |
|---------------------------------------|---------------|------|
| Power.Active.Import (- .Export)       | P, P1..P3     | W    |
| Current.Import (L1..L3; none: I)      | I1..I3, I     | A    |
| Voltage (L1, L1-N ...; none: U)       | U1..U3, U     | V    |
| Energy.Active.Import.Register         | Ap            | kWh  |
| SoC                                   | SoC           | %    |
| Current.Offered                       | I_offered     | A    |

1.6 sends values as strings with a `unit` ("Wh", "kW" ...); 2.0.1 as numbers with
`unitOfMeasure` {unit, multiplier}. The measurand defaults to Energy.Active.Import.Register.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MEASURANDS", "sampled_values"]

# measurand -> (point base, SI unit of the point)
MEASURANDS = {
    "Power.Active.Import": ("P", "W"),
    "Power.Active.Export": ("P", "W"),  # subtracted: feeding back is P < 0
    "Current.Import": ("I", "A"),
    "Voltage": ("U", "V"),
    "Energy.Active.Import.Register": ("Ap", "kWh"),
    "SoC": ("SoC", "%"),
    "Current.Offered": ("I_offered", "A"),
}
# a value's unit -> factor to the SI unit of its point
_SCALE = {"W": 1.0, "kW": 1e3, "A": 1.0, "V": 1.0, "Wh": 1e-3, "kWh": 1.0, "Percent": 1.0}
_PHASED = {"P", "I", "U"}
MULTIPLIER = range(-10, 11)  # 2.0.1 unitOfMeasure.multiplier: powers of ten read; others skipped


def _phase(phase: Any) -> str:
    """ "L1", "L1-N" -> "1"; anything else (none, "N", "L1-L2") -> "" (a total)."""
    if isinstance(phase, str) and phase[:2] in ("L1", "L2", "L3") and phase[2:] in ("", "-N"):
        return phase[1]
    return ""


def _number(sample: dict[str, Any]) -> float | None:
    value = sample.get("value")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None  # 1.6 SignedData or garbage (or an integer beyond floats): not a reading
    return number if math.isfinite(number) else None


def sampled_values(samples: list[Any]) -> dict[str, float]:
    """The points of one MeterValue's sampledValue list (both versions)."""
    out: dict[str, float] = {}
    exported = 0.0
    for sample in samples:
        if not isinstance(sample, dict) or sample.get("format") == "SignedData":
            continue
        measurand = sample.get("measurand", "Energy.Active.Import.Register")
        known = MEASURANDS.get(measurand) if isinstance(measurand, str) else None
        number = _number(sample)
        if known is None or number is None:
            continue
        base, si = known
        measure = sample.get("unitOfMeasure")
        if isinstance(measure, dict):  # 2.0.1
            unit = measure.get("unit", "Wh" if base == "Ap" else si)
            multiplier = measure.get("multiplier", 0)
            if type(multiplier) is not int or multiplier not in MULTIPLIER:
                continue  # no meter reports 10^400 W: a value we would have to guess
            number *= 10.0**multiplier
        else:
            unit = sample.get("unit", "Wh" if base == "Ap" else si)
        scale = _SCALE.get(unit) if isinstance(unit, str) else None
        if scale is None:
            continue  # a unit we would have to guess
        number *= scale
        if not math.isfinite(number):
            continue
        phase = _phase(sample.get("phase")) if base in _PHASED else ""
        if base in _PHASED and "phase" in sample and not phase:
            continue  # line-to-line or neutral: no point of ours
        if measurand == "Power.Active.Export":
            if not phase:
                exported = number
            continue
        out[f"{base}{phase}"] = number
    if exported and "P" in out:
        out["P"] -= exported
    return out
