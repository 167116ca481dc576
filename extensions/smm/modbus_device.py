"""Modbus meters as SDK devices: one `ModbusMeter` per meter (unit id), one `ModbusLink` (a
pymodbus client) per serial port or TCP endpoint, shared by every meter on it.

Meters on one RS-485 line take turns through the SDK's bus lock; after each poll (and between
the requests of one poll) the line stays quiet for the Modbus RTU inter-frame gap (3.5
characters at the configured baud, 1.75 ms above 19200 baud). A meter that does not answer
costs one response timeout per try (no retries: the SDK backs off) and never the others' turn.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from extensions.sdk import Device, PointSpec

from .modbus_maps import RegisterMap, resolve_map
from .semantics import Meter, Ratios

__all__ = [
    "EXCEPTION_NAMES",
    "LinkConfig",
    "LinkPool",
    "MeterConfigError",
    "ModbusLink",
    "ModbusMeter",
    "ModbusMeterError",
    "build_meters",
]

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_FUNCTIONS = {3: "holding", 4: "input"}

_LINK_KEYS = {"serial", "baudrate", "parity", "stopbits", "bytesize", "host", "port"}
_METER_KEYS = {
    "device",
    "map",
    "unit",
    "interval",
    "response_timeout",
    "ct",
    "vt",
    "index_max",
    "max_backoff",
} | _LINK_KEYS


class ModbusMeterError(Exception):
    """A read that failed: no answer, a Modbus exception, or the line/connection is down."""


class MeterConfigError(ValueError):
    """A `modbus` entry of the smm config that cannot be used (names the entry and key)."""


@dataclass(frozen=True)
class LinkConfig:
    """One line: an RS-485 serial port (RTU) or a TCP endpoint."""

    serial: str = ""
    host: str = ""
    port: int = 502
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    response_timeout: float = 0.3

    @property
    def is_rtu(self) -> bool:
        return bool(self.serial)

    @property
    def key(self) -> str:
        return f"rtu:{self.serial}" if self.is_rtu else f"tcp:{self.host}:{self.port}"

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the line (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    @property
    def frame_gap(self) -> float:
        """The RTU inter-frame silence (Modbus over serial line, 2.5.1.1)."""
        if not self.is_rtu:
            return 0.0
        return 3.5 * self.char_time if self.baudrate <= 19200 else 0.00175

    def line_time(self, registers: int) -> float:
        """Seconds a read of `registers` takes on the line: request, answer, two gaps."""
        if not self.is_rtu:
            return 0.0
        return (8 + 5 + 2 * registers) * self.char_time + 2 * self.frame_gap

    def same_line(self, other: LinkConfig) -> bool:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize) == (
            other.baudrate,
            other.parity,
            other.stopbits,
            other.bytesize,
        )


class ModbusLink:
    """One pymodbus client for one line, shared by the meters on it."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.users = 0
        # Made on first use: pymodbus clients bind to the running event loop, and meters are
        # configured before the extension's loop starts.
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None

    @property
    def client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._client is not None:
            return self._client
        config = self.config
        # No retries: a dead meter must cost one timeout; the SDK backs off and tries again.
        if config.is_rtu:
            self._client = AsyncModbusSerialClient(
                config.serial,
                baudrate=config.baudrate,
                parity=config.parity,
                stopbits=config.stopbits,
                bytesize=config.bytesize,
                timeout=config.response_timeout,
                retries=0,
                reconnect_delay=0.5,
                reconnect_delay_max=10.0,
            )
        else:
            self._client = AsyncModbusTcpClient(
                config.host,
                port=config.port,
                timeout=config.response_timeout,
                retries=0,
                reconnect_delay=0.5,
                reconnect_delay_max=10.0,
            )
        return self._client

    @property
    def where(self) -> str:
        return (
            self.config.serial if self.config.is_rtu else f"{self.config.host}:{self.config.port}"
        )

    async def read(self, unit: int, function: int, start: int, count: int) -> list[int]:
        what = f"read {_FUNCTIONS[function]} registers {start}+{count}"
        if not self.client.connected and not await self.client.connect():
            raise ModbusMeterError(f"cannot open {self.where} ({what} from unit {unit})")
        call = (
            self.client.read_input_registers
            if function == 4
            else self.client.read_holding_registers
        )
        try:
            rr = await call(start, count=count, device_id=unit)
        except ConnectionException as err:
            raise ModbusMeterError(f"{self.where}: connection lost ({what}, unit {unit})") from err
        except ModbusIOException as err:
            # pymodbus drops frames with a bad CRC or from another unit: also "no answer".
            raise ModbusMeterError(
                f"no answer from unit {unit} on {self.where} within "
                f"{self.config.response_timeout:g} s ({what})"
            ) from err
        except ModbusException as err:
            raise ModbusMeterError(f"unit {unit} on {self.where}: {err} ({what})") from err
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise ModbusMeterError(
                f"unit {unit} on {self.where} answered Modbus exception {code} ({name}) to {what}"
            )
        if len(rr.registers) < count:
            raise ModbusMeterError(
                f"unit {unit} on {self.where} answered {len(rr.registers)} of {count} "
                f"registers ({what})"
            )
        return list(rr.registers[:count])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LinkPool:
    """The links of one extension, by line: meters naming the same serial port or TCP endpoint
    share one client. Create one per event loop (the extension's)."""

    def __init__(self) -> None:
        self.links: dict[str, ModbusLink] = {}
        # pymodbus logs every timeout at ERROR with a hex dump of the line; our errors say what
        # failed and the SDK logs them rate-limited.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    def get(self, config: LinkConfig) -> ModbusLink:
        link = self.links.get(config.key)
        if link is None:
            link = self.links[config.key] = ModbusLink(config)
        elif not link.config.same_line(config):
            raise MeterConfigError(
                f"{config.key}: meters on one line must share baudrate/parity/stopbits/bytesize "
                f"({link.config} vs {config})"
            )
        link.users += 1
        return link

    def release(self, link: ModbusLink) -> None:
        link.users -= 1
        if link.users <= 0:
            link.close()
            self.links.pop(link.config.key, None)


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
        if bool(entry.get("serial")) == bool(entry.get("host")):
            raise MeterConfigError(f"{where}: give either serial (RTU) or host (TCP)")
        link_cfg = LinkConfig(
            serial=str(entry.get("serial", "")),
            host=str(entry.get("host", "")),
            port=int(entry.get("port", 502)),
            baudrate=int(entry.get("baudrate", 9600)),
            parity=str(entry.get("parity", "N")),
            stopbits=int(entry.get("stopbits", 1)),
            bytesize=int(entry.get("bytesize", 8)),
            response_timeout=float(entry.get("response_timeout", 0.3)),
        )
        if link_cfg.parity not in ("N", "E", "O"):
            raise MeterConfigError(f"{where}: parity must be N, E or O, not {link_cfg.parity!r}")
        here = f"{link_cfg.key} unit {unit}"
        if here in seen:
            raise MeterConfigError(f"{where}: {here} is already device {seen[here]!r}")
        seen[here] = device
        register_map = resolve_map(str(entry["map"]), base_dir)
        link = pool.get(link_cfg)
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
