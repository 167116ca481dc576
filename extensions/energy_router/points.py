"""The Energy Router's points: their specs, and the readings of each data or error frame, in
the vocabulary's names and the load reference (docs/ENERGY-ROUTER.md, "Points")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from extensions.sdk import PointSpec

from . import messages as m
from .frames import Frame, floats_of, shortest
from .messages import BATTERY, INVERTER, Controller

__all__ = ["ErPoints"]


@dataclass(frozen=True)
class ErPoints:
    device: str
    period: float
    battery_sign: float  # +1: the battery controller's Pbat > 0 is charging; -1: discharging
    inverter_sign: float  # +1: the inverter's P, Q > 0 are imported (into the ER); -1: exported

    def name(self, point: str) -> str:
        return f"{self.device}/{point}"

    def specs(self) -> list[PointSpec]:
        d, every = self.device, self.period

        def measured(point: str, unit: str, text: str) -> PointSpec:
            # STALE when no report came for three periods (a lost frame is not an outage)
            return PointSpec(f"{d}/{point}", unit=unit, period=3 * every, description=text)

        return [
            measured("P", "W", "AC active power, > 0 into the Energy Router"),
            measured("Q", "var", "AC reactive power, load reference"),
            measured("U", "V", "AC voltage"),
            PointSpec(f"{d}/grid_connected", kind="bool", period=3 * every),
            measured("U_DC", "V", "DC bus voltage"),
            measured("SoC", "%", "battery state of charge"),
            measured("P_ESS", "W", "battery power, > 0 charging"),
            measured("U_ESS", "V", "battery voltage"),
            measured("P_PV", "W", "PV power, < 0 producing"),
            measured("U_PV", "V", "PV voltage"),
            PointSpec(f"{d}/inverter_error", kind="int", description="last inverter error code"),
            PointSpec(f"{d}/battery_error", kind="int", description="last battery error code"),
            PointSpec(f"{d}/pv_error", kind="int", description="last PV error code"),
            PointSpec(f"{d}/inverter_online", kind="bool", description="link to controller 1"),
            PointSpec(f"{d}/battery_online", kind="bool", description="link to controller 2"),
        ]

    def online(self, controller: Controller) -> str:
        return self.name(f"{controller.name}_online")

    def readings(self, controller: Controller, frame: Frame) -> dict[str, Any]:
        """The points a frame of `controller` carries ({} for one without measurements)."""
        if frame.ctrl == controller.error and frame.byte is not None:
            which = {
                (INVERTER.error, m.INV_ERROR): "inverter_error",
                (BATTERY.error, m.BAT_ERROR): "battery_error",
                (BATTERY.error, m.PV_ERROR): "pv_error",
            }.get((frame.ctrl, frame.flag))
            return {self.name(which): frame.byte} if which else {}
        if frame.ctrl != controller.data:
            return {}
        readings = self._inverter(frame) if controller is INVERTER else self._battery(frame)
        # A float the line garbled into NaN or infinity is no measurement; the others are
        # float32s, stored as the decimals the controller meant.
        return {
            k: shortest(v) + 0.0 if isinstance(v, float) else v  # + 0.0: never -0.0
            for k, v in readings.items()
            if not isinstance(v, float) or math.isfinite(v)
        }

    def _inverter(self, frame: Frame) -> dict[str, Any]:
        if frame.flag == m.INV_MEASUREMENTS:
            values = floats_of(frame.payload, 3)
            if values is None or len(frame.payload) != 13:
                return {}
            p, q, uac = values
            return {
                self.name("P"): _signed(self.inverter_sign, p),
                self.name("Q"): _signed(self.inverter_sign, q),
                self.name("U"): uac,
                self.name("grid_connected"): frame.payload[12] == 1,
            }
        if frame.flag == m.INV_GRID_STATE and frame.byte is not None:
            return {self.name("grid_connected"): frame.byte == 1}
        if frame.flag == m.INV_VDC and (vdc := floats_of(frame.payload, 1)):
            return {self.name("U_DC"): vdc[0]}
        return {}

    def _battery(self, frame: Frame) -> dict[str, Any]:
        if frame.flag == m.BAT_P and (bat := floats_of(frame.payload, 3)):
            soc, p_bat, u_bat = bat
            return {
                self.name("SoC"): soc,
                self.name("P_ESS"): _signed(self.battery_sign, p_bat),
                self.name("U_ESS"): u_bat,
            }
        if frame.flag == m.PV_P and (pv := floats_of(frame.payload, 2)):
            p_pv, u_pv = pv
            # The controller counts production positive; the load reference negative.
            return {self.name("P_PV"): _signed(-1.0, p_pv), self.name("U_PV"): u_pv}
        return {}


def _signed(sign: float, value: float) -> float:
    # + 0.0: a device's 0 W read with sign -1 is -0.0, which screens show as "-0.00 W".
    return sign * value + 0.0
