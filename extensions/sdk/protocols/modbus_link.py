"""Modbus lines: one pymodbus client per serial port (RTU) or TCP endpoint, shared by every
device (unit id) on it.

Devices on one RS-485 line take turns through the SDK's bus lock (give each device
`bus = link.config.key` and `bus_gap = link.config.frame_gap`); the line then stays quiet for
the Modbus RTU inter-frame gap (3.5 characters at the configured baud, 1.75 ms above 19200
baud). A device that does not answer costs one response timeout per try (no retries: the SDK
backs off) and never the others' turn.

Config keys of a line (`LinkConfig.from_config`, `LINK_KEYS`):

    serial = "/dev/ttyUSB0"        # RTU ...
    baudrate = 9600                # parity = "N", stopbits = 1, bytesize = 8
    # host = "192.0.2.10"          # ... or Modbus TCP (port = 502)
    response_timeout = 0.3         # s to wait for an answer
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

__all__ = [
    "EXCEPTION_NAMES",
    "LINK_KEYS",
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

LINK_KEYS = frozenset(
    {"serial", "baudrate", "parity", "stopbits", "bytesize", "host", "port", "response_timeout"}
)


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
    """One line: an RS-485 serial port (RTU) or a TCP endpoint."""

    serial: str = ""
    host: str = ""
    port: int = 502
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    response_timeout: float = 0.3

    @classmethod
    def from_config(cls, entry: Mapping[str, Any], where: str = "config") -> LinkConfig:
        """The line keys of a config entry (other keys are left to the caller)."""
        if bool(entry.get("serial")) == bool(entry.get("host")):
            raise LinkConfigError(f"{where}: give either serial (RTU) or host (TCP)")
        try:
            config = cls(
                serial=str(entry.get("serial", "")),
                host=str(entry.get("host", "")),
                port=int(entry.get("port", 502)),
                baudrate=int(entry.get("baudrate", 9600)),
                parity=str(entry.get("parity", "N")),
                stopbits=int(entry.get("stopbits", 1)),
                bytesize=int(entry.get("bytesize", 8)),
                response_timeout=float(entry.get("response_timeout", 0.3)),
            )
        except (TypeError, ValueError) as err:
            raise LinkConfigError(f"{where}: {err}") from err
        if config.parity not in ("N", "E", "O"):
            raise LinkConfigError(f"{where}: parity must be N, E or O, not {config.parity!r}")
        if config.baudrate <= 0 or config.response_timeout <= 0:
            raise LinkConfigError(f"{where}: baudrate and response_timeout must be > 0")
        return config

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
        if not self.client.connected and not await self.client.connect():
            raise ModbusLinkError(f"cannot open {self.where} ({what} from unit {unit})")
        call = (
            self.client.read_input_registers
            if function == 4
            else self.client.read_holding_registers
        )
        try:
            rr = await call(start, count=count, device_id=unit)
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
        if len(rr.registers) < count:
            raise ModbusLinkError(
                f"unit {unit} on {self.where} answered {len(rr.registers)} of {count} "
                f"registers ({what})"
            )
        return list(rr.registers[:count])

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
