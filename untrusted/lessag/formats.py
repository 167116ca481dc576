"""The two payload formats of the measurements, byte for byte (docs/LESSAG.md, "Formats"):

- `influx_line`: the S4G data warehouse's InfluxDB line protocol, one line per device,
  `<measurement> <field>=<value>,...,Type=<code> <ns>`;
- `senml_json`: SenML JSON (RFC 8428), one pack per device.

Both take a device's readings as `PointUpdate`s (the vocabulary name is the part after the
device prefix) and leave values of another quality than GOOD or DERIVED out, or mark them,
as the config says. Fields are sorted by name so the bytes are stable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from smx.sdk import PointUpdate

__all__ = ["SENML_UNITS", "influx_line", "point_of", "senml_json", "usable"]

PLAIN_QUALITIES = frozenset({"GOOD", "DERIVED"})

# SMX units (docs/DATA-MODEL.md) as SenML units: RFC 8428 section 12.1 and the secondary units
# registry of RFC 8798 (kWh, kvarh). PF is a ratio ("/"), SoC a percentage ("%EL" is the
# remaining energy of a battery, which a state of charge is). Unknown units are left out.
SENML_UNITS = {
    "V": "V",
    "A": "A",
    "W": "W",
    "var": "var",
    "VA": "VA",
    "Hz": "Hz",
    "kWh": "kWh",
    "kvarh": "kvarh",
    "Wh": "Wh",
    "1": "/",
    "%": "%EL",
    "s": "s",
    "Cel": "Cel",
}


def point_of(name: str) -> str:
    """`P` of `smm/P`, `P` of `usm1/ess/P`: the vocabulary name."""
    return name.rsplit("/", 1)[-1]


def usable(readings: Iterable[PointUpdate], marked: bool) -> list[PointUpdate]:
    """Readings with a value, sorted by point name; other qualities kept only when `marked`."""
    keep = [r for r in readings if r.value is not None and (marked or r.quality in PLAIN_QUALITIES)]
    return sorted(keep, key=lambda r: point_of(r.name))


# -- InfluxDB line protocol ----------------------------------------------------------------------


def _escape(text: str, chars: str) -> str:
    for c in "\\" + chars:
        text = text.replace(c, "\\" + c)
    return text


def _field_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):  # the core refuses them; never write what Influx refuses
            raise ValueError("not a finite number")
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def influx_line(
    measurement: str, kind_code: int, readings: list[PointUpdate], marked: bool
) -> bytes:
    """One line (with its newline); b"" when nothing is left to publish. The timestamp is the
    newest source time of the readings, in nanoseconds."""
    rows = usable(readings, marked)
    if not rows:
        return b""
    fields = []
    for r in rows:
        key = _escape(point_of(r.name), ",= ")
        fields.append(f"{key}={_field_value(r.value)}")
        if r.quality not in PLAIN_QUALITIES:
            fields.append(f'{_escape("q_" + point_of(r.name), ",= ")}="{r.quality}"')
    fields.append(f"Type={kind_code}")
    # Microseconds first: a float of unix seconds holds them exactly, nanoseconds it does not.
    ns = round(max(r.source_time for r in rows) * 1e6) * 1000
    return f"{_escape(measurement, ', ')} {','.join(fields)} {ns}\n".encode()


# -- SenML JSON ---------------------------------------------------------------------------------


def senml_json(base_name: str, readings: list[PointUpdate], marked: bool) -> bytes:
    """A SenML pack: the base name in the first record, then per point `n`, `u` (when SMX's
    unit has a SenML name), `v`, `vs` or `vb`, `t` (absolute, seconds), and `quality` (an
    extension field, RFC 8428 4.4) for another quality than GOOD or DERIVED."""
    records: list[dict[str, object]] = []
    for r in usable(readings, marked):
        rec: dict[str, object] = {}
        if not records:
            rec["bn"] = base_name
        rec["n"] = point_of(r.name)
        unit = SENML_UNITS.get(r.unit)
        if unit:
            rec["u"] = unit
        if isinstance(r.value, bool):
            rec["vb"] = r.value
        elif isinstance(r.value, int | float):
            rec["v"] = r.value
        else:
            rec["vs"] = str(r.value)
        rec["t"] = round(r.source_time, 3)
        if r.quality not in PLAIN_QUALITIES:
            rec["quality"] = r.quality
        records.append(rec)
    if not records:
        return b""
    return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()
