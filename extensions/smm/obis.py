"""OBIS-addressed data sets of an IEC 62056-21 readout -> the meter vocabulary (docs/DATA-MODEL.md).

`1-0:1.8.0*255(012345.678*kWh)` and `1.8.0(012345.678*kWh)` are the same register. Values are
converted to the vocabulary's units (Wh -> kWh, kW -> W, ...), powers to the load reference
(import - export), billing snapshots `1.8.0*NN` become `Ap.billNN` with the billing date of
`0.1.2*NN` as their source time (no valid date: no snapshot), and the meter clock (`0.9.1` time,
`0.9.2` date, or DSMR's `0-0:1.0.0`) is the source time of everything else. Reactive energy and
power given per quadrant fill Rp/Rm and Q. Anything not understood ends in `unmapped`, never in
an error. The rules, with the reasons: docs/METERING.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from extensions.sdk import Reading

from .iec62056_21 import DataSet

__all__ = ["ObisCode", "ObisResult", "map_datasets", "parse_obis", "parse_meter_datetime"]

log = logging.getLogger(__name__)

_OBIS = re.compile(
    r"(?:(?P<a>\d{1,3})-(?P<b>\d{1,3}):)?"
    r"(?P<c>[0-9A-Za-z]{1,3})\.(?P<d>[0-9A-Za-z]{1,3})(?:\.(?P<e>[0-9A-Za-z]{1,3}))?"
    r"(?:[*&](?P<f>\d{1,3}))?"
)


class ObisCode(NamedTuple):
    """A parsed OBIS address. `key` is C.D.E (E defaults to 0 for numeric C.D codes); `f` is
    the F group as sent (None when absent)."""

    a: int | None
    b: int | None
    c: str
    d: str
    e: str
    f: int | None

    @property
    def key(self) -> str:
        return f"{self.c}.{self.d}.{self.e}" if self.e else f"{self.c}.{self.d}"

    @property
    def current(self) -> bool:
        """The register's present value: F absent or 255."""
        return self.f is None or self.f == 255

    @property
    def billing(self) -> int | None:
        """The billing period an F of 0..95 names. 96..99 are left out on purpose: household
        meters (EMH, EasyMeter, ...) use them for consumption over the last day, week, month
        or year, which is not an index at a billing date. 100..254 (relative periods) are not
        dated either."""
        return self.f if self.f is not None and self.f <= 95 else None


def parse_obis(address: str) -> ObisCode | None:
    """`1-0:1.8.0*255`, `1.8.0`, `1.8.0*01`, `C.1` -> ObisCode; None if not an OBIS address."""
    m = _OBIS.fullmatch(address.strip())
    if m is None:
        return None
    c, d, e = m.group("c"), m.group("d"), m.group("e") or ""
    if not e and c.isdigit() and d.isdigit():
        e = "0"  # "1.8" is "1.8.0"
    f = m.group("f")
    a = m.group("a")
    b = m.group("b")
    return ObisCode(
        int(a) if a is not None else None,
        int(b) if b is not None else None,
        c,
        d,
        e,
        int(f) if f is not None else None,
    )


# C.D.E of instantaneous values -> (vocabulary name, target unit). Power pairs are handled below.
_DIRECT: dict[str, tuple[str, str]] = {
    "12.7.0": ("U", "V"),
    "32.7.0": ("U1", "V"),
    "52.7.0": ("U2", "V"),
    "72.7.0": ("U3", "V"),
    "11.7.0": ("I", "A"),
    "31.7.0": ("I1", "A"),
    "51.7.0": ("I2", "A"),
    "71.7.0": ("I3", "A"),
    "14.7.0": ("f", "Hz"),
    "13.7.0": ("PF", "1"),
    "33.7.0": ("PF1", "1"),
    "53.7.0": ("PF2", "1"),
    "73.7.0": ("PF3", "1"),
}
# Net power = import register - export register (load reference: > 0 import).
_POWER: dict[str, tuple[str, str, str]] = {
    "P": ("1.7.0", "2.7.0", "W"),
    "P1": ("21.7.0", "22.7.0", "W"),
    "P2": ("41.7.0", "42.7.0", "W"),
    "P3": ("61.7.0", "62.7.0", "W"),
    "Q": ("3.7.0", "4.7.0", "var"),
    "Q1": ("23.7.0", "24.7.0", "var"),
    "Q2": ("43.7.0", "44.7.0", "var"),
    "Q3": ("63.7.0", "64.7.0", "var"),
}
_NET_POWER = {"P": "16.7.0", "P1": "36.7.0", "P2": "56.7.0", "P3": "76.7.0"}
# Energy registers C.8.T: C -> vocabulary name (T 0 = total, 1..9 = tariff).
_ENERGY = {"1": ("Ap", "kWh"), "2": ("Am", "kWh"), "3": ("Rp", "kvarh"), "4": ("Rm", "kvarh")}

# Unit (lower case) -> factor to the target unit, per target unit.
_UNITS: dict[str, dict[str, Decimal]] = {
    "W": {"w": Decimal(1), "kw": Decimal(1000), "mw": Decimal(1_000_000)},
    "var": {"var": Decimal(1), "kvar": Decimal(1000), "mvar": Decimal(1_000_000)},
    "kWh": {"wh": Decimal("0.001"), "kwh": Decimal(1), "mwh": Decimal(1000)},
    "kvarh": {"varh": Decimal("0.001"), "kvarh": Decimal(1), "mvarh": Decimal(1000)},
    "V": {"v": Decimal(1), "kv": Decimal(1000)},
    "A": {"a": Decimal(1), "ma": Decimal("0.001"), "ka": Decimal(1000)},
    "Hz": {"hz": Decimal(1)},
    "1": {"": Decimal(1)},
}


@dataclass
class ObisResult:
    """Vocabulary readings (secondary values, ready for `Meter.readings`), the data sets not
    mapped (full address -> raw text), the meter clock and error register, if given."""

    readings: dict[str, Reading] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)
    meter_time: dt.datetime | None = None
    error_code: str | None = None


def parse_meter_datetime(
    date: str, time: str, tz: dt.tzinfo, *, fold: int = 0
) -> dt.datetime | None:
    """Meter clock: date `YYMMDD` (some meters prefix a digit: `0170318`), time `hhmmss`
    (or `hhmm`), in the meter's zone `tz` -> aware UTC datetime. None if not a valid date."""
    date, time = date.strip(), time.strip().replace(":", "")
    if not (date.isdigit() and time.isdigit() and len(date) >= 6 and len(time) in (4, 6)):
        return None
    date = date[-6:]
    try:
        local = dt.datetime(
            2000 + int(date[:2]),
            int(date[2:4]),
            int(date[4:6]),
            int(time[:2]),
            int(time[2:4]),
            int(time[4:6] or 0),
            tzinfo=tz,
            fold=fold,
        )
    except ValueError:
        return None
    return local.astimezone(dt.UTC)


def _stamp(text: str, tz: dt.tzinfo) -> dt.datetime | None:
    """A billing date `YYMMDDhhmm[ss]` (optionally with a leading season digit)."""
    text = text.strip()
    if not text.isdigit():
        return None
    if len(text) in (11, 13):
        text = text[1:]
    if len(text) == 10:
        return parse_meter_datetime(text[:6], text[6:], tz)
    if len(text) == 12:
        return parse_meter_datetime(text[:6], text[6:], tz)
    if len(text) == 6:
        return parse_meter_datetime(text, "0000", tz)
    return None


def _convert(value: str, unit: str, target: str) -> float | None:
    factors = _UNITS[target]
    factor = factors.get(unit.strip().lower()) if unit.strip() else Decimal(1)
    if factor is None:
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    result = float(number * factor)
    return result if math.isfinite(result) else None  # 1e400 is a finite Decimal


def map_datasets(datasets: Iterable[DataSet], *, tz: dt.tzinfo = dt.UTC) -> ObisResult:
    """Map the data sets of one readout; `tz` is the zone of the meter's clock."""
    result = ObisResult()
    current: dict[str, DataSet] = {}  # C.D.E -> data set, F absent or 255
    billing: dict[int, dict[str, DataSet]] = {}
    billing_dates: dict[int, dt.datetime | None] = {}
    for ds in datasets:
        code = parse_obis(ds.address)
        if code is None or not ds.values or (code.a is not None and code.a not in (0, 1)):
            result.unmapped[ds.address] = _text(ds)
        elif code.current:
            if code.key in current:  # the same register twice: keep the first, note the other
                result.unmapped[ds.address] = _text(ds)
            current.setdefault(code.key, ds)
        elif code.billing is None:  # history or relative registers (see ObisCode.billing)
            result.unmapped[ds.address] = _text(ds)
        elif code.key == "0.1.2":
            billing_dates[code.billing] = _stamp(ds.value.value, tz)
        else:
            billing.setdefault(code.billing, {}).setdefault(code.key, ds)

    mapped = {"0.9.1", "0.9.2", "F.F.0", "F.F"}
    result.meter_time = _meter_clock(current, tz, mapped)
    for key in ("F.F.0", "F.F"):
        if key in current:
            result.error_code = current[key].value.value
    quality = "GOOD"
    if result.error_code is not None and result.error_code.strip("0 ") != "":
        quality = "UNCERTAIN"  # the meter reports an error state (docs/DATA-MODEL.md)

    values = _map_registers(_pairs(current), mapped)
    result.readings = {n: Reading(v, quality, result.meter_time) for n, v in values.items()}
    for key, ds in current.items():
        if key not in mapped:
            result.unmapped[ds.address] = _text(ds)
    for period, registers in sorted(billing.items()):
        date = billing_dates.get(period)
        done: set[str] = set()
        if date is not None:  # an unused slot has no (or a zero) date: not a snapshot
            for name, v in _map_registers(_pairs(registers), done, energy_only=True).items():
                now = result.readings.get(name)
                # A snapshot dated after the meter's clock, or above today's index, is wrong.
                odd = (result.meter_time is not None and date > result.meter_time) or (
                    now is not None and isinstance(now.value, float) and v > now.value
                )
                result.readings[f"{name}.bill{period:02d}"] = Reading(
                    v, "UNCERTAIN" if odd else quality, date
                )
        for key, ds in registers.items():
            if key not in done:
                result.unmapped[ds.address] = _text(ds)
    if result.unmapped:
        log.debug("unmapped OBIS data sets: %s", ", ".join(result.unmapped))
    return result


def _meter_clock(
    current: dict[str, DataSet], tz: dt.tzinfo, mapped: set[str]
) -> dt.datetime | None:
    """The meter clock: `0.9.2` date with `0.9.1` time, or DSMR's `0-0:1.0.0(YYMMDDhhmmssX)`
    (X: S summer, W winter time, which settles the hour that occurs twice)."""
    if "0.9.1" in current and "0.9.2" in current:
        return parse_meter_datetime(current["0.9.2"].value.value, current["0.9.1"].value.value, tz)
    ds = current.get("1.0.0")
    code = parse_obis(ds.address) if ds is not None else None
    if ds is None or code is None or code.a != 0:
        return None
    m = _DSMR_CLOCK.fullmatch(ds.value.value.strip())
    if m is None:
        return None
    # Winter time settles the hour that occurs twice: its second occurrence (fold 1).
    stamp = parse_meter_datetime(m.group(1), m.group(2), tz, fold=int(m.group(3) in ("W", "w")))
    mapped.add("1.0.0")
    return stamp


_DSMR_CLOCK = re.compile(r"(\d{6})(\d{6})([SWsw])?")


def _pairs(registers: dict[str, DataSet]) -> dict[str, tuple[str, str]]:
    return {key: (ds.value.value, ds.value.unit) for key, ds in registers.items()}


def _map_registers(
    registers: dict[str, tuple[str, str]], mapped: set[str], *, energy_only: bool = False
) -> dict[str, float]:
    """Vocabulary values from C.D.E registers; adds the keys it used to `mapped`."""
    out: dict[str, float] = {}
    for key, (value, unit) in registers.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[1] == "8" and parts[0] in _ENERGY and parts[2].isdigit():
            name, target = _ENERGY[parts[0]]
            tariff = int(parts[2])
            if not 0 <= tariff <= 9:
                continue
            number = _convert(value, unit, target)
            if number is not None:
                out[name if tariff == 0 else f"{name}_T{tariff}"] = number
                mapped.add(key)
        elif key in _DIRECT and not energy_only:
            name, target = _DIRECT[key]
            number = _convert(value, unit, target)
            if number is not None:
                out[name] = number
                mapped.add(key)
    _quadrant_energies(registers, mapped, out)
    if energy_only:
        return out
    for name, (plus, minus, target) in _POWER.items():
        a = _convert(*registers[plus], target) if plus in registers else None
        b = _convert(*registers[minus], target) if minus in registers else None
        if a is None and b is None:
            net = _NET_POWER.get(name)
            if net is not None and net in registers:
                c = _convert(*registers[net], target)
                if c is not None:
                    out[name] = c
                    mapped.add(net)
            elif name in _QUADRANT_POWER:
                _quadrant_sum(registers, _QUADRANT_POWER[name], "var", name, mapped, out)
            continue
        out[name] = (a or 0.0) - (b or 0.0)
        mapped.update(k for k, v in ((plus, a), (minus, b)) if v is not None)
    return out


# Reactive quantities per quadrant (QI..QIV: C = 5, 6, 7, 8 for the total, 25.. 45.. 65.. per
# phase). Under OBIS, R+ = QI + QII and R- = QIII + QIV; a meter that gives only the quadrants
# gets Rp/Rm (and Q = R+ - R-) from them. All four are needed, or the sum would be wrong.
_QUADRANT_POWER = {
    "Q": (("5.7.0", "6.7.0"), ("7.7.0", "8.7.0")),
    "Q1": (("25.7.0", "26.7.0"), ("27.7.0", "28.7.0")),
    "Q2": (("45.7.0", "46.7.0"), ("47.7.0", "48.7.0")),
    "Q3": (("65.7.0", "66.7.0"), ("67.7.0", "68.7.0")),
}


def _quadrant_energies(
    registers: dict[str, tuple[str, str]], mapped: set[str], out: dict[str, float]
) -> None:
    for tariff in range(10):
        suffix = "" if tariff == 0 else f"_T{tariff}"
        q = [f"{c}.8.{tariff}" for c in (5, 6, 7, 8)]
        if not all(k in registers for k in q):
            continue
        values = {k: _convert(*registers[k], "kvarh") for k in q}
        if any(v is not None and v < 0 for v in values.values()):
            continue  # an energy register is never negative: not a sum to trust
        for name, pair in ((f"Rp{suffix}", q[:2]), (f"Rm{suffix}", q[2:])):
            if name in out:  # the meter's own R+/R- register wins
                continue
            first, second = values[pair[0]], values[pair[1]]
            if first is not None and second is not None:
                out[name] = first + second
                mapped.update(pair)


def _quadrant_sum(
    registers: dict[str, tuple[str, str]],
    quadrants: tuple[tuple[str, str], tuple[str, str]],
    target: str,
    name: str,
    mapped: set[str],
    out: dict[str, float],
) -> None:
    keys = [*quadrants[0], *quadrants[1]]
    if not all(k in registers for k in keys):
        return
    values = [_convert(*registers[k], target) for k in keys]
    if any(v is None for v in values):
        return
    qi, qii, qiii, qiv = (v or 0.0 for v in values)
    out[name] = qi + qii - qiii - qiv
    mapped.update(keys)


def _text(ds: DataSet) -> str:
    return "".join(f"({v.value}*{v.unit})" if v.unit else f"({v.value})" for v in ds.values)
