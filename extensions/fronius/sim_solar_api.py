"""The simulator's Solar API v1 side: the answers of a GEN24 Plus with battery and Smart Meter,
in the shapes of the recorded ones (tests/extensions/fronius/fixtures/gen24_plus_byd/), with
the plant's live values and the Solar API's own signs (P_PV > 0 producing, P_Akku > 0
discharging, P_Load < 0 consuming, P_Grid > 0 importing)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from .sim_plant import Plant

__all__ = ["SolarApiResponder"]


def _envelope(data: Any, arguments: dict[str, str], code: int = 0, reason: str = "") -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return json.dumps(
        {
            "Body": {"Data": data},
            "Head": {
                "RequestArguments": arguments,
                "Status": {"Code": code, "Reason": reason, "UserMessage": ""},
                "Timestamp": now,
            },
        },
        indent=3,
    ).encode()


def _unit(value: float | None, unit: str) -> dict[str, Any]:
    return {"Unit": unit, "Value": value}


class SolarApiResponder:
    """`respond(path, query) -> (status, body)` for sim_http.HttpServer."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant

    def __call__(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        if path == "/solar_api/GetAPIVersion.cgi":
            body = {"APIVersion": 1, "BaseURL": "/solar_api/v1/", "CompatibilityRange": "1.7-3"}
            return 200, json.dumps(body).encode()
        cgi = path.removeprefix("/solar_api/v1/")
        handler = {
            "GetActiveDeviceInfo.cgi": self.devices,
            "GetInverterInfo.cgi": self.inverter_info,
            "GetPowerFlowRealtimeData.fcgi": self.power_flow,
            "GetInverterRealtimeData.cgi": self.inverter,
            "GetMeterRealtimeData.cgi": self.meter,
            "GetStorageRealtimeData.cgi": self.storage,
        }.get(cgi)
        if handler is None:
            return 404, b"Not Found"
        self.plant.step()
        return 200, _envelope(handler(query), query)

    def devices(self, query: dict[str, str]) -> Any:
        return {
            "Inverter": {"1": {"DT": 1, "Serial": "sim-0001"}},
            "Meter": {"0": {"DT": -1, "Serial": "sim-0200"}},
            "Storage": {"0": {"DT": -1, "Serial": "sim-battery"}},
        }

    def inverter_info(self, query: dict[str, str]) -> Any:
        return {
            "1": {
                "CustomName": "GEN24 simulated",
                "DT": 1,
                "ErrorCode": 0,
                "InverterState": "Running",
                "PVPower": 6000,
                "Show": 1,
                "StatusCode": 7,
                "UniqueID": "sim-0001",
            }
        }

    def power_flow(self, query: dict[str, str]) -> Any:
        p = self.plant
        t = p.now_t()
        pv, ac, grid = p.pv(t), p.ac(), p.grid()
        return {
            "Inverters": {
                "1": {
                    "Battery_Mode": "normal" if p.mod == 0 else "charge boost",
                    "DT": 1,
                    "E_Day": None,
                    "E_Total": p.inverter_wh,
                    "E_Year": None,
                    "P": ac,
                    "SOC": p.soc,
                }
            },
            "Site": {
                "BackupMode": True,
                "BatteryStandby": False,
                "E_Day": None,
                "E_Total": p.inverter_wh,
                "E_Year": None,
                "Meter_Location": "grid",
                "Mode": "bidirectional",
                "P_Akku": -p.battery,
                "P_Grid": grid,
                "P_Load": -p.load(t),
                "P_PV": pv,
                "rel_Autonomy": 100.0 * min(1.0, ac / max(1.0, p.load(t))),
                "rel_SelfConsumption": 100.0,
            },
            "Version": "12",
        }

    def inverter(self, query: dict[str, str]) -> Any:
        p = self.plant
        ac = p.ac()
        if query.get("DataCollection") == "3PInverterData":
            u = [230.0 + 1.5 * k for k in range(3)]
            return {
                **{f"UAC_L{k + 1}": _unit(u[k], "V") for k in range(3)},
                **{f"IAC_L{k + 1}": _unit(abs(ac) / 3 / u[k], "A") for k in range(3)},
                "T_AMBIENT": _unit(None, "C"),
            }
        return {
            "DAY_ENERGY": _unit(None, "Wh"),
            "DeviceStatus": {"ErrorCode": 0, "InverterState": "Running", "StatusCode": 7},
            "FAC": _unit(50.0, "Hz"),
            "PAC": _unit(ac, "W"),
            "SAC": _unit(abs(ac), "VA"),
            "TOTAL_ENERGY": _unit(p.inverter_wh, "Wh"),
            "UAC": _unit(230.0, "V"),
            "YEAR_ENERGY": _unit(None, "Wh"),
        }

    def meter(self, query: dict[str, str]) -> Any:
        p = self.plant
        grid = p.grid()
        phases = [grid * share for share in (0.4, 0.35, 0.25)]
        u = [230.0 + 1.5 * k for k in range(3)]
        meter: dict[str, Any] = {
            "Details": {
                "Manufacturer": "Fronius",
                "Model": "Smart Meter TS 65A-3",
                "Serial": "sim",
            },
            "Enable": 1,
            "EnergyReal_WAC_Minus_Absolute": p.export_wh,
            "EnergyReal_WAC_Plus_Absolute": p.import_wh,
            "EnergyReal_WAC_Sum_Consumed": p.import_wh,
            "EnergyReal_WAC_Sum_Produced": p.export_wh,
            "Frequency_Phase_Average": 50.0,
            "Meter_Location_Current": 0.0,
            "PowerApparent_S_Sum": abs(grid),
            "PowerFactor_Sum": 1.0 if grid >= 0 else -1.0,
            "PowerReactive_Q_Sum": 0.0,
            "PowerReal_P_Sum": grid,
            "Visible": 1.0,
        }
        for k in range(3):
            meter[f"PowerReal_P_Phase_{k + 1}"] = phases[k]
            meter[f"Voltage_AC_Phase_{k + 1}"] = u[k]
            meter[f"Current_AC_Phase_{k + 1}"] = abs(phases[k]) / u[k]
        return {"0": meter}

    def storage(self, query: dict[str, str]) -> Any:
        p = self.plant
        return {
            "0": {
                "Controller": {
                    "Capacity_Maximum": p.capacity_wh,
                    "Current_DC": p.battery / 400.0,
                    "DesignedCapacity": p.capacity_wh,
                    "Details": {"Manufacturer": "BYD", "Model": "simulated", "Serial": "sim"},
                    "Enable": 1,
                    "StateOfCharge_Relative": p.soc,
                    "Temperature_Cell": 21.5,
                    "Voltage_DC": 400.0,
                },
                "Modules": [],
            }
        }
