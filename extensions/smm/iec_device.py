"""One IEC 62056-21 meter as an SDK device: a readout per poll, mapped to the vocabulary and
to primary values (semantics.Meter). Meters on one RS-485 port share a bus (the SDK polls them
one at a time) and one open port (the SDK's SerialLine), and are told apart by address. Its
config keys: config.py, `IecMeterConfig`."""

from __future__ import annotations

import datetime as dt
import logging
import os
import zoneinfo
from collections.abc import Iterable

from extensions.sdk import Device, PointSpec, Reading

from .config import DEFAULT_POINTS, IecMeterConfig
from .iec_client import IecClient, Readout, iec_line
from .obis import ObisResult, map_datasets
from .semantics import Meter, Ratings, Ratios

__all__ = ["DEFAULT_POINTS", "IecMeterDevice"]

log = logging.getLogger(__name__)


class IecMeterDevice(Device):
    """One meter from its checked config entry (`IecMeterConfig`: port, address, mode, bauds,
    timeouts, ratios, timezone, bus, points)."""

    def __init__(self, config: IecMeterConfig) -> None:
        self.config = config
        self.meter = Meter(
            config.device,
            Ratios(ct=config.ct, vt=config.vt),
            index_max=config.index_max,
            period=config.interval,
            ratings=Ratings(config.u_nominal, config.i_max),
        )
        self.interval = config.interval
        self.timeout = config.read_timeout + 5.0 if config.timeout is None else config.timeout
        self.bus_gap = config.bus_gap
        self.max_backoff = config.max_backoff
        self.client = IecClient(
            iec_line(config.port, char_timeout=config.char_timeout),
            address=config.address,
            mode=config.mode,
            initial_baud=config.initial_baud,
            max_baud=config.max_baud,
            reaction_time=config.reaction_time,
            answer_timeout=config.answer_timeout,
            read_timeout=config.read_timeout,
            require_bcc=config.require_bcc,
            require_crc=config.require_crc,
        )
        zone = config.timezone
        self.tz: dt.tzinfo = zoneinfo.ZoneInfo(zone) if zone else _local_zone()
        self.name = config.name or f"iec:{config.device}"
        self.bus = config.bus or config.port
        self.points = config.points
        self.last_readout: Readout | None = None
        self.last_result: ObisResult | None = None
        self._zone_told = False

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
        if result.meter_time is not None and self.config.timezone is None and not self._zone_told:
            self._zone_told = True  # a wrong zone shifts every source time: say so once
            log.warning(
                "%s: the meter's clock is read in this box's time zone (%s); set timezone "
                '(e.g. "Europe/Rome") to the meter\'s own',
                self.name,
                dt.datetime.now(self.tz).tzname(),
            )
        if result.unmapped:
            log.debug("%s: %d unmapped data sets", self.name, len(result.unmapped))
        return self.meter.readings(result.readings)

    async def close(self) -> None:
        self.client.close()


def _local_zone() -> dt.tzinfo:
    """This box's zone with its daylight-saving rules ($TZ, else /etc/localtime): a fixed
    offset taken at start would be an hour off for half the year."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return zoneinfo.ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
        return dt.datetime.now().astimezone().tzinfo or dt.UTC
