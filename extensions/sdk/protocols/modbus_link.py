"""Modbus lines: one pymodbus client per serial port (RTU) or TCP endpoint, shared by every
device (unit id) on it.

Devices on one RS-485 line take turns through the SDK's bus lock (give each device
`bus = link.config.key` and `bus_gap = link.config.frame_gap`); the line then stays quiet for
the Modbus RTU inter-frame gap (3.5 characters at the configured baud, 1.75 ms above 19200
baud). A device that does not answer costs one response timeout per try (no retries: the SDK
backs off) and never the others' turn.

Config keys of a line: `LinkConfig` is their schema (`ext.settings`, smx.sdk.config). A device
entry's schema inherits it, e.g. `@dataclass(frozen=True, kw_only=True) class MeterConfig(
LinkConfig)`, and `LinkConfig.from_config(entry, key)` is the entry's line:

    serial = "/dev/ttyUSB0"        # RTU ...
    baudrate = 9600                # parity = "N", stopbits = 1, bytesize = 8
    # host = "192.0.2.10"          # ... or Modbus TCP (port = 502)
    response_timeout = "300ms"     # to wait for an answer (a plain number is seconds)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from smx.process_env import SetupError
from smx.sdk.config import Seconds, setting

__all__ = [
    "EXCEPTION_NAMES",
    "LinkConfig",
    "LinkConfigError",
    "LinkPool",
    "ModbusLink",
    "ModbusLinkError",
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


class ModbusLinkError(Exception):
    """A read that failed: no answer, a Modbus exception, or the line/connection is down.
    `code` is the Modbus exception code when the device answered with one, else None."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class LinkConfigError(ValueError):
    """Line settings that cannot be used (the message names the entry and key)."""


@dataclass(frozen=True)
class LinkConfig:
    """One line: an RS-485 serial port (RTU) or a TCP endpoint. Also the schema of a config
    entry's line keys (smx.sdk.config checks types and ranges; `from_config` the rest)."""

    serial: str = ""
    host: str = ""
    port: int = setting(502, min=1, max=65535)
    baudrate: int = setting(9600, min=50, max=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = setting(1, min=1, max=2)
    bytesize: int = setting(8, min=5, max=8)
    response_timeout: Seconds = setting(0.3, min=0.001, max=60)

    @classmethod
    def from_config(cls, entry: LinkConfig, where: str) -> LinkConfig:
        """The line of a checked config entry (a schema that inherits LinkConfig; its other
        keys are the caller's). `where` is the entry's key in site.toml, for the SetupError
        when it gives both or neither of serial and host."""
        if bool(entry.serial) == bool(entry.host):
            both = ", not both" if entry.serial else ""
            raise SetupError(f"{where}: give either serial (RTU) or host (TCP){both}")
        return LinkConfig(
            **{f.name: getattr(entry, f.name) for f in dataclasses.fields(LinkConfig)}
        )

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
    """One pymodbus client for one line, shared by the devices on it."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.users = 0
        # Made on first use: pymodbus clients bind to the running event loop, and devices are
        # configured before the extension's loop starts.
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None

    @property
    def client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._client is not None:
            return self._client
        config = self.config
        # No retries: a dead device must cost one timeout; the SDK backs off and tries again.
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
        """`count` registers from `start` (function 3 holding, 4 input), exactly that many."""
        what = f"read {_FUNCTIONS[function]} registers {start}+{count}"
        call = (
            self.client.read_input_registers
            if function == 4
            else self.client.read_holding_registers
        )
        rr = await self._request(unit, what, lambda: call(start, count=count, device_id=unit))
        if len(rr.registers) < count:
            raise ModbusLinkError(
                f"unit {unit} on {self.where} answered {len(rr.registers)} of {count} "
                f"registers ({what})"
            )
        return list(rr.registers[:count])

    async def write(self, unit: int, start: int, values: list[int]) -> None:
        """Write `values` to holding registers from `start` (function 16, one request)."""
        what = f"write holding registers {start}+{len(values)}"
        await self._request(
            unit, what, lambda: self.client.write_registers(start, values, device_id=unit)
        )

    async def _request(
        self, unit: int, what: str, send: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """One request, every way it can fail as a ModbusLinkError saying `what`."""
        if not self.client.connected and not await self.client.connect():
            raise ModbusLinkError(f"cannot open {self.where} ({what}, unit {unit})")
        try:
            rr = await send()
        except ConnectionException as err:
            raise ModbusLinkError(f"{self.where}: connection lost ({what}, unit {unit})") from err
        except ModbusIOException as err:
            # pymodbus drops frames with a bad CRC or from another unit: also "no answer".
            raise ModbusLinkError(
                f"no answer from unit {unit} on {self.where} within "
                f"{self.config.response_timeout:g} s ({what})"
            ) from err
        except ModbusException as err:
            raise ModbusLinkError(f"unit {unit} on {self.where}: {err} ({what})") from err
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise ModbusLinkError(
                f"unit {unit} on {self.where} answered Modbus exception {code} ({name}) to {what}",
                code,
            )
        return rr

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class LinkPool:
    """The links of one extension, by line: devices naming the same serial port or TCP endpoint
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
            raise LinkConfigError(
                f"{config.key}: devices on one line must share baudrate/parity/stopbits/bytesize "
                f"({link.config} vs {config})"
            )
        link.users += 1
        return link

    def release(self, link: ModbusLink) -> None:
        link.users -= 1
        if link.users <= 0:
            link.close()
            self.links.pop(link.config.key, None)
