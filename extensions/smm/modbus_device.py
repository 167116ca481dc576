"""Modbus meters as SDK devices: one `ModbusMeter` per meter (unit id), read with its register
map over the SDK's `ModbusLink` (extensions/sdk/protocols/modbus_link.py): one pymodbus client
per serial port or TCP endpoint, shared by every meter on it.

Meters on one RS-485 line take turns through the SDK's bus lock; after each poll (and between
the requests of one poll) the line stays quiet for the Modbus RTU inter-frame gap. A meter that
does not answer costs one response timeout per try (no retries: the SDK backs off) and never
the others' turn.

Site config: the smm extension passes its checked `modbus` entries (config.py,
`ModbusMeterConfig`) to `build_meters`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extensions.sdk import Device, PointSpec, SetupError
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkConfigError, LinkPool, ModbusLink
from extensions.sdk.protocols.modbus_maps import MapError, RegisterMap
from smx.settings import closest

from .config import ModbusMeterConfig
from .meter_maps import resolve_map, shipped_maps
from .semantics import Meter, Ratings, Ratios

__all__ = ["ModbusMeter", "build_meters"]

log = logging.getLogger(__name__)


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
        ratings: Ratings | None = None,
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
            ratings=ratings or Ratings(),
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
    entries: Sequence[ModbusMeterConfig],
    pool: LinkPool | None = None,
    *,
    base_dir: Path | None = None,
    where: str = "extensions.smm.config.modbus",
) -> list[ModbusMeter]:
    """The smm config's checked `modbus` entries -> devices (shared links from `pool`). Map
    paths are relative to `base_dir` (the site config's directory). What the schema cannot
    check is a SetupError naming the key as `where[i].key`."""
    pool = pool or LinkPool()
    meters: list[ModbusMeter] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]"
        link_cfg = LinkConfig.from_config(entry, key)
        here = f"{link_cfg.key} unit {entry.unit}"
        if here in seen:
            raise SetupError(f"{key}.unit: {here} is already device {seen[here]!r}")
        seen[here] = entry.device
        register_map = _register_map(entry.map, base_dir, f"{key}.map")
        try:
            link = pool.get(link_cfg)
        except LinkConfigError as err:
            raise SetupError(f"{key}: {err}") from err
        meters.append(
            ModbusMeter(
                entry.device,
                register_map,
                link,
                entry.unit,
                pool=pool,
                interval=entry.interval,
                ratios=Ratios(ct=entry.ct, vt=entry.vt),
                index_max=entry.index_max,
                max_backoff=entry.max_backoff,
                ratings=Ratings(entry.u_nominal, entry.i_max),
            )
        )
    return meters


def _register_map(ref: str, base_dir: Path | None, key: str) -> RegisterMap:
    """A shipped map or a map file; SetupError naming `key` (and the nearest shipped name)."""
    shipped = shipped_maps()
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if ref not in shipped and path.suffix != ".toml" and not path.exists():
        close = closest(ref, shipped)
        hint = f"did you mean {close!r}? " if close else ""
        raise SetupError(
            f"{key}: no register map {ref!r} ({hint}shipped: {', '.join(shipped)}; "
            "or the path of a .toml map file)"
        )
    try:
        return resolve_map(ref, base_dir)
    except MapError as err:
        raise SetupError(f"{key}: {err}") from err
