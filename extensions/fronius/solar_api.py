"""The Fronius Solar API v1 client: discovery, the realtime requests, the response envelope,
and the device's limits (at most 2 requests in flight, at least `min_gap` seconds between two
realtime requests of one device). Responses become point values in solar_points.py.

Every response is `{"Head": {"Status": {"Code": n, "Reason": ...}, ...}, "Body": {"Data":
...}}`; Code 0 is success, 255 and 11 mean "not supported by this device" (a Symo without
storage, a GEN24 without GetLoggerInfo), anything else a device error. v0 datamanagers
(firmware before 3.0.3) are not supported: discovery says so in one line.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from .http_get import HttpError, http_get

__all__ = [
    "NOT_SUPPORTED",
    "Discovery",
    "NotSupported",
    "SolarApi",
    "SolarApiError",
    "parse_api_version",
    "parse_response",
]

NOT_SUPPORTED = (255, 11)
IN_FLIGHT = 2
V0_MESSAGE = (
    "this Fronius device speaks Solar API v0 (Datamanager firmware before 3.0.3), which the "
    "fronius extension does not support: update the Datamanager firmware, or set "
    "solar_api = false and read it over Modbus SunSpec"
)


class SolarApiError(Exception):
    """A response that cannot be used: not JSON, not the Solar API's shape, or a Status.Code
    other than 0 (`code`)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotSupported(SolarApiError):
    """Status.Code 255 or 11: the device does not have this request (or this data)."""


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise SolarApiError(f"{what}: not JSON, or cut short ({err}; {len(raw)} bytes)") from None


def parse_response(raw: bytes, what: str = "response") -> dict[str, Any]:
    """`Body.Data` of a v1 response; SolarApiError (NotSupported for 255/11) otherwise."""
    doc = _json(raw, what)
    head = doc.get("Head") if isinstance(doc, dict) else None
    status = head.get("Status") if isinstance(head, dict) else None
    code = status.get("Code") if isinstance(status, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        raise SolarApiError(f"{what}: no Head.Status.Code: not a Solar API v1 response")
    if code != 0:
        reason = status.get("Reason") if isinstance(status, dict) else ""
        error = NotSupported if code in NOT_SUPPORTED else SolarApiError
        raise error(f"{what}: Status.Code {code} ({str(reason)[:200] or 'no reason given'})", code)
    body = doc.get("Body")
    data = body.get("Data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise SolarApiError(f"{what}: Body.Data missing or not an object")
    return data


def parse_api_version(raw: bytes) -> str:
    """The BaseURL of a GetAPIVersion answer; SolarApiError if it is not API version 1."""
    doc = _json(raw, "GetAPIVersion")
    if not isinstance(doc, dict) or doc.get("APIVersion") != 1:
        version = doc.get("APIVersion") if isinstance(doc, dict) else None
        if version is None or version == 0:
            raise SolarApiError(V0_MESSAGE)
        raise SolarApiError(f"Solar API version {version!r}: the fronius extension speaks v1")
    base = doc.get("BaseURL")
    if not isinstance(base, str) or not base.startswith("/") or not base.endswith("/"):
        raise SolarApiError(f"GetAPIVersion: BaseURL {base!r} is not a path")
    return base


@dataclass
class Discovery:
    base_url: str = "/solar_api/v1/"
    inverters: list[str] = field(default_factory=list)  # DeviceIds, as strings
    meters: list[str] = field(default_factory=list)
    storages: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # inverter id -> CustomName


class SolarApi:
    """One Fronius device (GEN24 inverter or Datamanager) over HTTP."""

    def __init__(
        self, host: str, port: int = 80, *, timeout: float = 5.0, min_gap: float = 4.0
    ) -> None:
        self.host, self.port, self.timeout, self.min_gap = host, port, timeout, min_gap
        self.base_url = "/solar_api/v1/"
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._last: dict[str, float] = {}  # realtime request -> monotonic time of its start
        self.requests = 0

    async def get(self, target: str, *, realtime: bool = False) -> bytes:
        """The raw body of one request; realtime requests of one device are paced."""
        if realtime:  # book the start time first: waiting must not hold a slot in flight
            now = time.monotonic()
            start = max(now, self._last.get(target, -1e9) + self.min_gap)
            self._last[target] = start
            if start > now:
                await asyncio.sleep(start - now)
        async with self._in_flight:
            self.requests += 1
            return await http_get(self.host, self.port, target, self.timeout)

    async def request(self, cgi: str, realtime: bool = True, **params: str) -> dict[str, Any]:
        """`Body.Data` of `<BaseURL><cgi>?<params>`."""
        query = f"?{urlencode(params)}" if params else ""
        raw = await self.get(f"{self.base_url}{cgi}{query}", realtime=realtime)
        return parse_response(raw, cgi)

    async def discover(self) -> Discovery:
        """API version (v1 only), then the devices the datamanager knows."""
        try:
            raw = await self.get("/solar_api/GetAPIVersion.cgi")
        except HttpError as err:
            if err.status == 404:  # v0 has no GetAPIVersion
                raise SolarApiError(V0_MESSAGE) from None
            raise
        found = Discovery(base_url=parse_api_version(raw))
        self.base_url = found.base_url
        try:
            devices = await self.request("GetActiveDeviceInfo.cgi", False, DeviceClass="System")
        except (NotSupported, HttpError) as err:
            if isinstance(err, HttpError) and err.status != 404:
                raise
            # Not listed: ask for meters and storage, "not supported" answers will tell.
            devices = {"Meter": {"0": {}}, "Storage": {"0": {}}}
        for cls, ids in (("Inverter", found.inverters), ("Meter", found.meters)):
            entry = devices.get(cls)
            if isinstance(entry, dict):
                ids += sorted(entry, key=_numeric)
        storage = devices.get("Storage")
        if isinstance(storage, dict):
            found.storages += sorted(storage, key=_numeric)
        try:  # names only, for the log: not worth failing over
            info = await self.request("GetInverterInfo.cgi", False)
        except (SolarApiError, HttpError):
            info = {}
        for device_id, inv in info.items():
            if isinstance(inv, dict) and isinstance(inv.get("CustomName"), str):
                found.names[device_id] = inv["CustomName"]
        return found


def _numeric(device_id: str) -> tuple[int, str]:
    """Sort key of a DeviceId: numbers in order, then anything else as text. Only ASCII digits,
    at most 9, are a number (str.isdigit alone takes "²", which int() refuses): an odd id of
    one device must not fail the discovery of all the others."""
    if device_id.isascii() and device_id.isdigit() and len(device_id) <= 9:
        return int(device_id), ""
    return 1 << 30, device_id
