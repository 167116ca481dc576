"""One IEC 62056-21 meter as an SDK device: a readout per poll, mapped to the vocabulary and
to primary values (semantics.Meter). Meters on one RS-485 port share a bus (the SDK polls them
one at a time) and one open port (the SDK's SerialLine), and are told apart by address."""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

from extensions.sdk import Device, PointSpec, Reading

from .iec62056_21 import CHAR_TIMEOUT
from .iec_client import IecClient, Readout, iec_line
from .obis import ObisResult, map_datasets
from .semantics import Meter, Ratios

__all__ = ["DEFAULT_POINTS", "IecConfigError", "IecMeterDevice"]

log = logging.getLogger(__name__)

# Declared before the first readout (a readout may add tariff and billing points).
DEFAULT_POINTS = ("U1", "U2", "U3", "I1", "I2", "I3", "P", "Q", "f", "Ap", "Am", "Rp", "Rm")
_KEYS = {
    "port", "address", "device", "name", "mode", "initial_baud", "max_baud", "interval",
    "timeout", "read_timeout", "char_timeout", "reaction_time", "answer_timeout", "ct", "vt",
    "index_max", "timezone", "require_bcc", "bus", "bus_gap", "max_backoff", "points",
}  # fmt: skip


class IecConfigError(ValueError):
    """The meter's configuration is unusable; the message names the key and value."""


class IecMeterDevice(Device):
    """Config keys (all optional but `port`):

    port            serial device, e.g. /dev/ttyUSB0
    address         meter address for the sign-on ("" = whoever is on the line)
    device          SMX device id of the points (default "smm")
    name            poller/health name (default "iec:<device>")
    mode            "C" (default), "B", "A", or "D" (meter pushes; polls wait for a telegram)
    initial_baud    300 (2400 in mode D); max_baud caps the mode C switch
    interval        seconds between readout starts (default 10)
    read_timeout    whole readout (default 60); timeout (SDK poll cut-off) read_timeout + 5
    char_timeout    silence inside a message (1.5); reaction_time before our ACK (0.2);
    answer_timeout  wait for the identification after t_r (1.5)
    ct, vt          transformer ratios; index_max register recirculation (kWh)
    timezone        IANA zone of the meter clock (default: this host's local zone)
    require_bcc     reject a data message without ETX/BCC (default true)
    bus             poll-serialisation key (default: the port); bus_gap quiet time after a poll
    points          vocabulary names to declare up front (default DEFAULT_POINTS)
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        unknown = sorted(set(config) - _KEYS)
        if unknown:
            raise IecConfigError(
                f"unknown IEC meter config key(s) {unknown}; known: {sorted(_KEYS)}"
            )
        port = config.get("port")
        if not isinstance(port, str) or not port:
            raise IecConfigError(f"IEC meter config: 'port' must be a device path, not {port!r}")
        device = str(config.get("device", "smm"))
        try:
            self.meter = Meter(
                device,
                Ratios(ct=float(config.get("ct", 1.0)), vt=float(config.get("vt", 1.0))),
                index_max=float(config.get("index_max", 0.0)),
                period=float(config.get("interval", 10.0)),
            )
            read_timeout = float(config.get("read_timeout", 60.0))
            self.interval = float(config.get("interval", 10.0))
            self.timeout = float(config.get("timeout", read_timeout + 5.0))
            self.bus_gap = float(config.get("bus_gap", 0.0))
            self.max_backoff = float(config.get("max_backoff", 60.0))
            char_timeout = float(config.get("char_timeout", CHAR_TIMEOUT))
            self.client = IecClient(
                iec_line(port, char_timeout=char_timeout),
                address=str(config.get("address", "")),
                mode=str(config.get("mode", "C")),
                initial_baud=int(config.get("initial_baud", 300)),
                max_baud=int(config["max_baud"]) if config.get("max_baud") else None,
                reaction_time=float(config.get("reaction_time", 0.2)),
                answer_timeout=float(config.get("answer_timeout", 1.5)),
                read_timeout=read_timeout,
                require_bcc=bool(config.get("require_bcc", True)),
            )
        except (TypeError, ValueError) as err:
            raise IecConfigError(f"IEC meter {device!r} on {port}: {err}") from err
        zone = config.get("timezone")
        try:
            self.tz: dt.tzinfo = zoneinfo.ZoneInfo(zone) if zone else _local_zone()
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise IecConfigError(f"IEC meter {device!r}: unknown timezone {zone!r}") from err
        self.name = str(config.get("name", f"iec:{device}"))
        self.bus = str(config.get("bus", port))
        self.points = tuple(config.get("points", DEFAULT_POINTS))
        self.last_readout: Readout | None = None
        self.last_result: ObisResult | None = None

    def specs(self, points: Iterable[str] | None = None) -> list[PointSpec]:
        """Point specs to declare: `points` (vocabulary names), else the configured ones plus
        whatever the last readout produced."""
        names = list(points) if points is not None else list(self.points)
        if points is None and self.last_result is not None:
            names += [n for n in self.last_result.readings if n not in names]
        return [self.meter.spec(n) for n in names]

    def describe(self, name: str) -> PointSpec | None:
        """Tariff and billing points appear with the first readout: declared then (SDK hook)."""
        device, _, point = name.partition("/")
        if device != self.meter.device:
            return None
        try:
            return self.meter.spec(point)
        except ValueError:
            return None

    async def poll(self) -> dict[str, Reading]:
        readout = await self.client.aread()
        result = map_datasets(readout.datasets, tz=self.tz)
        self.last_readout, self.last_result = readout, result
        if result.unmapped:
            log.debug("%s: %d unmapped data sets", self.name, len(result.unmapped))
        return self.meter.readings(result.readings)

    async def close(self) -> None:
        self.client.close()


def _local_zone() -> dt.tzinfo:
    return dt.datetime.now().astimezone().tzinfo or dt.UTC
