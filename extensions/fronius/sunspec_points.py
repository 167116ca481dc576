"""SunSpec models (decoded by the SDK's extensions/sdk/protocols/sunspec_models.py) -> point
values in the load reference of docs/DATA-MODEL.md, the same points and signs as the Solar API
gives (solar_points.py):

- inverter 101-103 / 111-113: `W` > 0 delivered -> `P` = -W; `WH` (Wh delivered) -> `Am` kWh;
- 160 (MPPT): Fronius lists the battery as two more modules, `StCha` (charging) and
  `StDisCha` (discharging), both >= 0: `P_ESS` = StCha - StDisCha; the other modules are PV:
  `P_PV` = -(their sum);
- 124 (storage): `ChaState` -> `SoC`, `ChaSt` -> `ESS_state` (its SunSpec symbol);
- meter 201-204 / 211-214: import positive already: `W` -> `P`, `TotWhImp` -> `Ap`.

A point SunSpec marks "not implemented" (decoded as None) is left out: on SunSpec that is a
property of the device (phase B of a single-phase inverter), not a failed read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extensions.sdk.protocols.sunspec_models import model_definition

from .values import Values, negated, number, obj

__all__ = [
    "INVERTER_MODELS",
    "METER_MODELS",
    "inverter",
    "meter",
    "mppt",
    "storage",
]

INVERTER_MODELS = (101, 102, 103, 111, 112, 113)
METER_MODELS = (201, 202, 203, 204, 211, 212, 213, 214)
KWH = 0.001


def _put(out: Values, name: str, value: float | str | None) -> None:
    if value is not None:
        out[name] = value


def inverter(m: Mapping[str, Any]) -> Values:
    out: Values = {}
    _put(out, "P", negated(m.get("W")))
    _put(out, "S", number(m.get("VA")))
    _put(out, "f", number(m.get("Hz")))
    _put(out, "Am", number(m.get("WH"), KWH))
    for k, phase in ((1, "A"), (2, "B"), (3, "C")):
        _put(out, f"U{k}", number(m.get(f"PhVph{phase}")))
        _put(out, f"I{k}", number(m.get(f"Aph{phase}")))
    return out


def mppt(m: Mapping[str, Any]) -> Values:
    pv: float | None = None
    charge = discharge = None
    modules = m.get("module")
    for module in modules if isinstance(modules, list) else []:
        module = obj(module)
        label = str(module.get("IDStr") or "")
        power = number(module.get("DCW"))
        if power is None:
            continue
        if label.startswith("StDisCha"):
            discharge = (discharge or 0.0) + power
        elif label.startswith("StCha"):
            charge = (charge or 0.0) + power
        else:
            pv = (pv or 0.0) + power
    out: Values = {}
    _put(out, "P_PV", negated(pv))
    if charge is not None or discharge is not None:
        out["P_ESS"] = (charge or 0.0) - (discharge or 0.0)
    return out


def _symbol(model_id: int, point: str, value: Any) -> str | None:
    for p in model_definition(model_id)["group"]["points"]:
        if p["name"] == point:
            for s in p.get("symbols", []):
                if s["value"] == value:
                    return str(s["name"])
    return None


def storage(m: Mapping[str, Any]) -> Values:
    out: Values = {}
    _put(out, "SoC", number(m.get("ChaState")))
    _put(out, "ESS_state", _symbol(124, "ChaSt", m.get("ChaSt")))
    return out


def meter(m: Mapping[str, Any]) -> Values:
    out: Values = {}
    names = {"P": "W", "Q": "VAR", "S": "VA", "f": "Hz"}
    for k, phase in ((1, "A"), (2, "B"), (3, "C")):
        names |= {f"P{k}": f"Wph{phase}", f"Q{k}": f"VARph{phase}", f"S{k}": f"VAph{phase}"}
        names |= {f"U{k}": f"PhVph{phase}", f"I{k}": f"Aph{phase}"}
    for name, key in names.items():
        _put(out, name, number(m.get(key)))
    for name, key in (("PF", "PF"), ("PF1", "PFphA"), ("PF2", "PFphB"), ("PF3", "PFphC")):
        _put(out, name, number(m.get(key), 0.01))  # percent in SunSpec
    _put(out, "Ap", number(m.get("TotWhImp"), KWH))
    _put(out, "Am", number(m.get("TotWhExp"), KWH))
    return out
