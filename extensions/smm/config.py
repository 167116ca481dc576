"""The smm config table (`[extensions.smm.config]` of site.toml) as typed schemas: every key a
meter entry accepts, its default and its range. `ext.settings(SmmConfig)` checks them all and
names a wrong key as written in site.toml, e.g. ``extensions.smm.config.modbus[0].prot: unknown
key (did you mean 'port'? ...)``. What a schema cannot say (a device id this extension owns, a
register map that exists, serial or host) is checked when the meters are built.

    [[extensions.smm.config.modbus]]      # a Modbus RTU / TCP meter: ModbusMeterConfig
    device = "pv"
    map = "eastron_sdm630"
    unit = 1
    host = "127.0.0.1"
    port = 5020

    [[extensions.smm.config.iec62056]]    # an IEC 62056-21 meter: IecMeterConfig
    device = "smm"
    port = "/dev/ttyUSB0"

Durations are "500ms", "10s", "5m" or a plain number of seconds.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field

from extensions.sdk import Seconds, setting
from extensions.sdk.protocols.modbus_link import LinkConfig
from smx.settings import closest

from .iec62056_21 import CHAR_TIMEOUT
from .semantics import unit_of

__all__ = ["DEFAULT_POINTS", "IecMeterConfig", "ModbusMeterConfig", "SmmConfig"]

# Declared before the first readout: none by default, so a point exists only once the meter
# has sent it (a meter without reactive registers has no Rp). `points` declares some up front.
DEFAULT_POINTS: tuple[str, ...] = ()


def _time_zone(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        close = closest(name, sorted(zoneinfo.available_timezones()))
        hint = f"did you mean {close!r}?" if close else "an IANA name like 'Europe/Rome'"
        return f"unknown time zone {name!r} ({hint})"


def _vocabulary_points(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            unit_of(name)
        except ValueError:
            return f"{name!r} is not a meter point of the vocabulary (docs/DATA-MODEL.md)"
    return None


_BAUDS = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _baud(rate: int | None) -> str | None:
    if rate is None or rate in _BAUDS:
        return None
    return f"must be a standard rate ({', '.join(map(str, _BAUDS))}), not {rate}"


def _iec_mode(mode: str) -> str | None:
    return None if mode.upper() in ("A", "B", "C", "D") else f"must be A, B, C or D, not {mode!r}"


def _not_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


@dataclass(frozen=True, kw_only=True)
class ModbusMeterConfig(LinkConfig):
    """One `[[extensions.smm.config.modbus]]` entry: a meter (unit id) on a Modbus line. The
    line keys (serial, baudrate, parity, stopbits, bytesize, or host and port; response_timeout)
    are the SDK's `LinkConfig`; exactly one of serial (RTU) and host (TCP)."""

    device: str = setting(check=_not_empty)  # device id of the points (smm/P, ...)
    map: str = setting(check=_not_empty)  # a shipped map, or a path to a map file
    unit: int = setting(min=1, max=247)  # Modbus unit (slave) id
    interval: Seconds = setting(1.0, min=0.01, max=86400)  # between polls
    ct: float = setting(1.0, min=0.001, max=1e6)  # CT / VT ratios: meters behind transformers
    vt: float = setting(1.0, min=0.001, max=1e6)
    index_max: float | None = setting(None, min=0.001)  # overrides the map's
    u_nominal: float = setting(230.0, min=1, max=1e6)  # V phase-neutral, for plausibility
    i_max: float = setting(100.0, min=0.001, max=1e5)  # A, the nameplate's maximum current
    max_backoff: Seconds = setting(30.0, min=0.01, max=86400)  # between tries of a dead meter


@dataclass(frozen=True)
class IecMeterConfig:
    """One `[[extensions.smm.config.iec62056]]` entry: an IEC 62056-21 meter. Only `port` is
    required."""

    port: str = setting(check=_not_empty)  # serial device, e.g. /dev/ttyUSB0
    address: str = ""  # meter address for the sign-on ("" = whoever is on the line)
    device: str = "smm"  # device id of the points
    name: str | None = None  # poller/health name (default "iec:<device>")
    # "C" (300 baud sign-on, then the switch), "B", "A", or "D" (the meter pushes)
    mode: str = setting("C", check=_iec_mode)
    initial_baud: int = setting(300, check=_baud)  # 300 means 2400 in mode D; DSMR 4/5: 115200
    max_baud: int | None = setting(None, check=_baud)  # caps the mode C switch
    interval: Seconds = setting(10.0, min=0.01, max=86400)  # between readout starts
    timeout: Seconds | None = setting(None, min=0.01, max=86400)  # poll cut-off: read_timeout + 5
    read_timeout: Seconds = setting(60.0, min=0.01, max=86400)  # the whole readout
    char_timeout: Seconds = setting(CHAR_TIMEOUT, min=0.001, max=60)  # silence inside a message
    reaction_time: Seconds = setting(0.2, max=10)  # before our ACK
    answer_timeout: Seconds = setting(1.5, min=0.001, max=60)  # for the identification
    ct: float = setting(1.0, min=0.001, max=1e6)  # transformer ratios
    vt: float = setting(1.0, min=0.001, max=1e6)
    index_max: float = setting(0.0, min=0)  # register recirculation (kWh)
    u_nominal: float = setting(230.0, min=1, max=1e6)  # V phase-neutral, for plausibility
    i_max: float = setting(100.0, min=0.001, max=1e5)  # A, the nameplate's maximum current
    # of the meter clock (default: this box's own zone; set it, a meter's clock is local time)
    timezone: str | None = setting(None, check=_time_zone)
    require_bcc: bool = True  # reject a data message without ETX/BCC
    # mode D: reject a telegram without a CRC after "!" (absent: only DSMR 4/5, which send one)
    require_crc: bool | None = None
    bus: str | None = None  # poll-serialisation key (default: the port)
    bus_gap: Seconds = setting(0.0, max=60)  # quiet time after a poll
    max_backoff: Seconds = setting(60.0, min=0.01, max=86400)  # between tries of a dead meter
    # vocabulary names to declare before the first readout (the rest come with the readouts)
    points: tuple[str, ...] = setting(DEFAULT_POINTS, check=_vocabulary_points)


@dataclass(frozen=True)
class SmmConfig:
    """The smm config table: one entry per meter."""

    modbus: list[ModbusMeterConfig] = field(default_factory=list)
    iec62056: list[IecMeterConfig] = field(default_factory=list)
