"""Solar API v1 responses (`Body.Data`) -> point values in the load reference of
docs/DATA-MODEL.md. The Solar API's own signs are converted here:

- PowerFlow `Site.P_PV` > 0 producing -> `P_PV` = -P_PV;
- PowerFlow `Site.P_Akku` > 0 discharging -> `P_ESS` = -P_Akku (> 0 charging);
- inverter `PAC` / PowerFlow `Inverters.<id>.P` > 0 feeding the grid -> `P` = -PAC (the
  inverter's AC side, load reference: < 0 while it produces);
- inverter `TOTAL_ENERGY` (Wh it delivered) -> `Am` in kWh;
- the Smart Meter at the grid already counts import positive: `PowerReal_P_Sum` -> `P` as is,
  `EnergyReal_WAC_Plus_Absolute` -> `Ap`, `..._Minus_Absolute` -> `Am` (Wh -> kWh).

Every function takes whatever JSON the device sent and never raises: a wrong shape is no
data, a null or non-number is None (BAD).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .values import Values, negated, number, obj, state_name

__all__ = ["inverter_3p", "inverter_common", "meter", "power_flow", "storage"]

KWH = 0.001  # Wh -> kWh


def _from(data: Mapping[str, Any], key: str, scale: float = 1.0) -> float | None:
    return number(data.get(key), scale)


def power_flow(data: Mapping[str, Any], inverter_id: str = "1") -> Values:
    """GetPowerFlowRealtimeData: PV and battery power, the inverter's AC power, SoC, battery
    mode."""
    site = obj(data.get("Site"))
    inverter = obj(obj(data.get("Inverters")).get(inverter_id))
    out: Values = {}
    if "P_PV" in site:
        out["P_PV"] = negated(site["P_PV"])
    has_battery = "SOC" in inverter or "Battery_Mode" in inverter
    if site.get("P_Akku") is not None or has_battery:
        out["P_ESS"] = negated(site.get("P_Akku"))
    if inverter:
        out["P"] = negated(inverter.get("P"))
    if "SOC" in inverter:
        out["SoC"] = number(inverter["SOC"])
    if "Battery_Mode" in inverter:
        out["ESS_state"] = state_name(inverter["Battery_Mode"])
    return out


def inverter_common(data: Mapping[str, Any]) -> Values:
    """GetInverterRealtimeData CommonInverterData: `{"PAC": {"Value": .., "Unit": "W"}, ...}`.
    At night the inverter leaves PAC and FAC out: they are None."""

    def value(key: str) -> Any:
        return obj(data.get(key)).get("Value")

    out: Values = {
        "P": negated(value("PAC")),
        "f": number(value("FAC")),
        "Am": number(value("TOTAL_ENERGY"), KWH),
    }
    if "SAC" in data:  # GEN24 only
        out["S"] = number(value("SAC"))
    return out


def inverter_3p(data: Mapping[str, Any]) -> Values:
    """GetInverterRealtimeData 3PInverterData: phase voltages and currents."""
    out: Values = {}
    for k in (1, 2, 3):
        out[f"U{k}"] = number(obj(data.get(f"UAC_L{k}")).get("Value"))
        out[f"I{k}"] = number(obj(data.get(f"IAC_L{k}")).get("Value"))
    return out


_METER = {
    "P": "PowerReal_P_Sum",
    "Q": "PowerReactive_Q_Sum",
    "S": "PowerApparent_S_Sum",
    "PF": "PowerFactor_Sum",
    "f": "Frequency_Phase_Average",
    **{f"P{k}": f"PowerReal_P_Phase_{k}" for k in (1, 2, 3)},
    **{f"Q{k}": f"PowerReactive_Q_Phase_{k}" for k in (1, 2, 3)},
    **{f"S{k}": f"PowerApparent_S_Phase_{k}" for k in (1, 2, 3)},
    **{f"PF{k}": f"PowerFactor_Phase_{k}" for k in (1, 2, 3)},
    **{f"U{k}": f"Voltage_AC_Phase_{k}" for k in (1, 2, 3)},
    **{f"I{k}": f"Current_AC_Phase_{k}" for k in (1, 2, 3)},
}
_METER_ENERGY = {
    "Ap": "EnergyReal_WAC_Plus_Absolute",
    "Am": "EnergyReal_WAC_Minus_Absolute",
    "Rp": "EnergyReactive_VArAC_Sum_Consumed",
    "Rm": "EnergyReactive_VArAC_Sum_Produced",
}


def _is_meter(entry: Mapping[str, Any]) -> bool:
    return "PowerReal_P_Sum" in entry or "Details" in entry


def meter(data: Mapping[str, Any]) -> Values:
    """GetMeterRealtimeData (Scope System: `{"0": {...}}`, or Scope Device: the meter itself):
    the meter at the grid connection (`Meter_Location_Current` 0), None if there is none."""
    entries = [data] if _is_meter(data) else [obj(v) for _, v in sorted(data.items())]
    at_grid = [e for e in entries if number(e.get("Meter_Location_Current")) in (0, None)]
    grid = next((e for e in at_grid if _is_meter(e)), None)
    if grid is None:
        return {}
    out: Values = {name: _from(grid, key) for name, key in _METER.items() if key in grid}
    for name, key in _METER_ENERGY.items():
        if key in grid:
            out[name] = _from(grid, key, KWH)
    return out


def storage(data: Mapping[str, Any]) -> Values:
    """GetStorageRealtimeData (Scope System): the first battery's state of charge."""
    for _, entry in sorted(data.items()):
        controller = obj(obj(entry).get("Controller"))
        if controller:
            return {"SoC": _from(controller, "StateOfCharge_Relative")}
    return {}
