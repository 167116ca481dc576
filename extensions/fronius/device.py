"""The Fronius inverter as one SDK device: each poll reads the Solar API and Modbus SunSpec
(whichever are configured, side by side), merges them (SunSpec first, the Solar API fills in
what SunSpec lacks) and publishes the inverter's points under `fronius/` and its Smart Meter's
under `fronius_meter/`.

Qualities: GOOD as read; a value reported null, or a point a source gave before and not now,
is BAD with its last value (left out while it never had one); `Ap`/`Am` integrated from P(t)
are DERIVED, wherever the device gives no counter. One source failing turns its points BAD and
shows in `smx status` (its own health entry); both failing is a failed poll (the SDK backs off).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from extensions.sdk import DeviceState, PointSpec, PolledDevice, Reading
from smx.vocabulary import lookup

from .energy import EnergyIntegrator
from .solar_source import SolarSource
from .sunspec_source import SunSpecSource
from .values import Values, merge

__all__ = ["FroniusDevice", "FroniusError"]

log = logging.getLogger(__name__)

Source = SolarSource | SunSpecSource


class FroniusError(Exception):
    """Neither the Solar API nor Modbus answered."""


class FroniusDevice(PolledDevice):
    def __init__(
        self,
        name: str,
        *,
        sunspec: SunSpecSource | None,
        solar: SolarSource | None,
        energy: EnergyIntegrator,
        meter_name: str | None = None,
        interval: float = 5.0,
        timeout: float = 15.0,
        max_backoff: float = 60.0,
        health: dict[str, DeviceState] | None = None,
    ) -> None:
        self.name, self.meter_name = name, meter_name
        self.sources: dict[str, Source] = {}
        if sunspec is not None:
            self.sources["modbus"] = sunspec
        if solar is not None:
            self.sources["solar_api"] = solar
        self.energy = energy
        self.interval, self.timeout, self.max_backoff = interval, timeout, max_backoff
        self.health = health or {}
        self.last: dict[str, Any] = {}  # point -> last real value
        self.meter_warned = False

    async def read_sources(self) -> tuple[Values, Values]:
        """(inverter, meter) values merged over the sources that answered."""
        names = list(self.sources)
        results = await asyncio.gather(
            *(self.sources[n].read() for n in names), return_exceptions=True
        )
        inverters: list[Values] = []
        meters: list[Values] = []
        errors: list[str] = []
        for name, result in zip(names, results, strict=True):
            state = self.health.get(name)
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                text = f"{name}: {type(result).__name__}: {result}"
                if state is None or not state.last_error:  # once per outage
                    log.warning("%s %s", self.name, text)
                errors.append(text)
                if state is not None:
                    state.ok, state.last_error = False, text
                    state.failures += 1
                continue
            if state is not None:
                state.ok, state.last_error = True, ""
            inverters.append(result[0])
            meters.append(result[1])
        if not inverters:
            raise FroniusError("; ".join(errors))
        return merge(*inverters), merge(*meters)

    async def poll(self) -> dict[str, Any]:
        inverter, meter = await self.read_sources()
        now = time.time()
        values = {f"{self.name}/{k}": v for k, v in inverter.items()}
        # A point given before and not now went away with its source or request: BAD.
        values |= {p: None for p in self.last if p.startswith(f"{self.name}/") and p not in values}
        readings = self._readings(values)
        power = inverter.get("P")
        if isinstance(power, float):
            totals = self.energy.add(power, now, f"{self.name}/Ap", f"{self.name}/Am")
            for point, total in totals.items():
                if point not in values:  # no counter of the device's own
                    readings[point] = Reading(total, "DERIVED")
        if self.meter_name is not None:
            prefix = f"{self.meter_name}/"
            meter_values = {prefix + k: v for k, v in meter.items()}
            meter_values |= {
                p: None for p in self.last if p.startswith(prefix) and p not in meter_values
            }
            readings |= self._readings(meter_values)
        elif meter and not self.meter_warned:
            self.meter_warned = True
            log.warning(
                "a Smart Meter answers, but meter_device is not one of this extension's "
                "devices: its points are not published"
            )
        return readings

    def _readings(self, values: Values) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for point, value in values.items():
            if value is not None:
                self.last[point] = value
                out[point] = value
            elif point in self.last:
                out[point] = Reading(self.last[point], "BAD")
        return out

    def describe(self, name: str) -> PointSpec | None:
        term = lookup(name)
        unit, kind = (term.unit, term.kind) if term else ("", "double")
        derived = name.endswith(("/Ap", "/Am")) and name.startswith(f"{self.name}/")
        return PointSpec(
            name,
            unit=unit,
            kind=kind,
            period=self.interval,
            description="integrated from P(t) where the device has no counter" if derived else "",
        )

    async def close(self) -> None:
        self.energy.save()
        sunspec = self.sources.get("modbus")
        if isinstance(sunspec, SunSpecSource):
            sunspec.close()
