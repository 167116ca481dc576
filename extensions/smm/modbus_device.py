"""Modbus meters as SDK devices: one `ModbusMeter` per meter (unit id), read with its register
map over the SDK's `ModbusLink` (extensions/sdk/protocols/modbus_link.py): one pymodbus client
per serial port or TCP endpoint, shared by every meter on it.

Meters on one RS-485 line take turns through the SDK's bus lock; after each poll (and between
the requests of one poll) the line stays quiet for the Modbus RTU inter-frame gap. A meter that
does not answer costs one response timeout per try (no retries: the SDK backs off) and never
the others' turn.

Site config (the smm extension passes each entry of its `modbus` list to `build_meters`):

    [[extensions.smm.config.modbus]]
    device = "smm"                 # device id of the points (smm/P, ...)
    map = "eastron_sdm630"         # a shipped map, or a path to a map file
    unit = 1                       # Modbus unit (slave) id
    serial = "/dev/ttyUSB0"        # RTU ...
    baudrate = 9600                # parity = "N", stopbits = 1, bytesize = 8
    # host = "192.0.2.10"          # ... or Modbus TCP (port = 502)
    interval = 1.0                 # s between polls
    response_timeout = 0.3         # s to wait for an answer
    ct = 1.0                       # CT / VT ratios, for meters behind transformers
    vt = 1.0
    # index_max = 99999.99         # overrides the map's
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extensions.sdk import Device, PointSpec
from extensions.sdk.protocols.modbus_link import (
    LINK_KEYS,
    LinkConfig,
    LinkConfigError,
    LinkPool,
    ModbusLink,
)
from extensions.sdk.protocols.modbus_maps import RegisterMap

from .meter_maps import resolve_map
from .semantics import Meter, Ratios

__all__ = ["MeterConfigError", "ModbusMeter", "build_meters"]

log = logging.getLogger(__name__)

_METER_KEYS = {
    "device",
    "map",
    "unit",
    "interval",
    "ct",
    "vt",
    "index_max",
    "max_backoff",
} | LINK_KEYS


class MeterConfigError(ValueError):
    """A `modbus` entry of the smm config that cannot be used (names the entry and key)."""


class ModbusMeter(Device):
    """One meter (unit id) on a link, read with its register map."""

    def __init__(
        self,
        device: str,
        register_map: RegisterMap,
        link: ModbusLink,
        unit: int,
        *,
        pool: LinkPool | None = None,
        interval: float = 1.0,
        ratios: Ratios | None = None,
        index_max: float | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.name = device
        self.map = register_map
        self.link = link
        self.unit = unit
        self.pool = pool
        self.interval = interval
        self.max_backoff = max_backoff
        self.meter = Meter(
            device,
            ratios or Ratios(),
            register_map.index_max if index_max is None else index_max,
            period=interval,
        )
        cfg = link.config
        self.bus = link.config.key  # every meter behind one port or gateway takes turns
        self.bus_gap = cfg.frame_gap
        blocks = register_map.blocks
        # A poll is cut off when every request would have used its whole timeout.
        self.timeout = sum(cfg.response_timeout + cfg.line_time(b.count) for b in blocks) + 0.5
        self._closed = False

    def specs(self) -> list[PointSpec]:
        return [self.meter.spec(p) for p in self.map.points]

    async def poll(self) -> dict[str, Any]:
        registers: dict[int, int] = {}
        for i, block in enumerate(self.map.blocks):
            if i and self.bus_gap:
                await asyncio.sleep(self.bus_gap)
            words = await self.link.read(self.unit, self.map.function, block.start, block.count)
            registers.update(zip(range(block.start, block.end), words, strict=True))
        return dict(self.meter.readings(self.map.decode(registers)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.pool is not None:
            self.pool.release(self.link)


def build_meters(
    entries: Sequence[Mapping[str, Any]],
    pool: LinkPool | None = None,
    base_dir: Path | None = None,
) -> list[ModbusMeter]:
    """The smm config's `modbus` entries -> devices (shared links from `pool`). Map paths are
    relative to `base_dir` (the site config's directory)."""
    pool = pool or LinkPool()
    meters: list[ModbusMeter] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"smm config modbus[{i}]"
        bad = set(entry) - _METER_KEYS
        if bad:
            raise MeterConfigError(
                f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_METER_KEYS)}"
            )
        for key in ("device", "map", "unit"):
            if key not in entry:
                raise MeterConfigError(f"{where}: missing key {key!r}")
        device = str(entry["device"])
        unit = entry["unit"]
        if not isinstance(unit, int) or isinstance(unit, bool) or not 1 <= unit <= 247:
            raise MeterConfigError(f"{where}: unit must be 1..247, not {unit!r}")
        try:
            link_cfg = LinkConfig.from_config(entry, where)
        except LinkConfigError as err:
            raise MeterConfigError(str(err)) from err
        here = f"{link_cfg.key} unit {unit}"
        if here in seen:
            raise MeterConfigError(f"{where}: {here} is already device {seen[here]!r}")
        seen[here] = device
        register_map = resolve_map(str(entry["map"]), base_dir)
        try:
            link = pool.get(link_cfg)
        except LinkConfigError as err:
            raise MeterConfigError(f"{where}: {err}") from err
        meters.append(
            ModbusMeter(
                device,
                register_map,
                link,
                unit,
                pool=pool,
                interval=float(entry.get("interval", 1.0)),
                ratios=Ratios(ct=float(entry.get("ct", 1.0)), vt=float(entry.get("vt", 1.0))),
                index_max=float(entry["index_max"]) if "index_max" in entry else None,
                max_backoff=float(entry.get("max_backoff", 30.0)),
            )
        )
    return meters
