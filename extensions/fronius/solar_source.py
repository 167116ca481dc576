"""The inverter (and its Smart Meter) over the Solar API v1: discovery once, then each poll the
realtime requests the device supports, at most two at a time (solar_api.py paces them). A
request the device answers "not supported" (255, 11) is not asked again until a restart; one
that fails otherwise gives nothing this time (the device turns the points it gave BAD) and the
others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import solar_points
from .solar_api import Discovery, NotSupported, SolarApi, SolarApiError
from .values import Values, merge

__all__ = ["SolarSource"]

log = logging.getLogger(__name__)


class SolarSource:
    def __init__(self, api: SolarApi, inverter_id: int = 1) -> None:
        self.api = api
        self.inverter_id = str(inverter_id)
        self.found: Discovery | None = None
        self.unsupported: set[str] = set()
        self.errors: dict[str, str] = {}  # request -> why it failed in the last poll

    def _requests(self) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
        api, dev = self.api, self.inverter_id
        return {
            "PowerFlow": lambda: api.request("GetPowerFlowRealtimeData.fcgi"),
            "Common": lambda: api.request(
                "GetInverterRealtimeData.cgi",
                Scope="Device",
                DeviceId=dev,
                DataCollection="CommonInverterData",
            ),
            "3P": lambda: api.request(
                "GetInverterRealtimeData.cgi",
                Scope="Device",
                DeviceId=dev,
                DataCollection="3PInverterData",
            ),
            "Meter": lambda: api.request("GetMeterRealtimeData.cgi", Scope="System"),
            "Storage": lambda: api.request("GetStorageRealtimeData.cgi", Scope="System"),
        }

    async def read(self) -> tuple[Values, Values]:
        """(inverter values, meter values); SolarApiError/HttpError when nothing answered."""
        if self.found is None:
            self.found = await self.api.discover()
            log.info(
                "Solar API at %s: inverters %s, meters %s, storage %s",
                self.api.host,
                self.found.inverters,
                self.found.meters,
                self.found.storages,
            )
            if not self.found.meters:
                self.unsupported.add("Meter")
            if not self.found.storages:
                self.unsupported.add("Storage")
        wanted = {k: f for k, f in self._requests().items() if k not in self.unsupported}
        results = await asyncio.gather(*(f() for f in wanted.values()), return_exceptions=True)
        data: dict[str, dict[str, Any]] = {}
        self.errors = {}
        for key, result in zip(wanted, results, strict=True):
            if isinstance(result, NotSupported):
                log.info("Solar API %s: %s; not asked again", key, result)
                self.unsupported.add(key)
            elif isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancelled: the poll is being cut off
                self.errors[key] = str(result)
            else:
                data[key] = result
        if not data and self.errors:
            raise SolarApiError("; ".join(f"{k}: {v}" for k, v in self.errors.items()))
        return self._inverter(data), self._meter(data)

    def _inverter(self, data: dict[str, dict[str, Any]]) -> Values:
        parts: list[Values] = []
        if "Common" in data:
            parts.append(solar_points.inverter_common(data["Common"]))
        if "3P" in data:
            parts.append(solar_points.inverter_3p(data["3P"]))
        if "PowerFlow" in data:
            parts.append(solar_points.power_flow(data["PowerFlow"], self.inverter_id))
        if "Storage" in data:
            parts.append(solar_points.storage(data["Storage"]))
        return merge(*parts)

    def _meter(self, data: dict[str, dict[str, Any]]) -> Values:
        return solar_points.meter(data["Meter"]) if "Meter" in data else {}
