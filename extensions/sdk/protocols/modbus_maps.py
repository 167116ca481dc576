"""Modbus register maps as data: load and check a TOML map, plan the reads, decode registers into
values (and encode them back, for simulators).

A map names, for each point, where the device keeps it and how to turn its registers into the
unit and sign the extension publishes:
`value = decode(registers) * scale * sign [* 10**scale_register]`. An extension ships its maps in
a directory of its own and passes it as `shipped_dirs`; a site can add its own by path
(`map = "/etc/smx/maps/my_meter.toml"`). Which point names a map may use is the extension's
business: it passes `check_point`, which raises ValueError for a name it does not know.
"""

from __future__ import annotations

import logging
import math
import struct
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sunspec_models import is_implemented

__all__ = [
    "MODBUS_MAX_REGISTERS",
    "TYPES",
    "Block",
    "MapError",
    "PointCheck",
    "PointMap",
    "RegisterMap",
    "load_map",
    "parse_map",
    "resolve_map",
    "shipped_maps",
]

log = logging.getLogger(__name__)

MODBUS_MAX_REGISTERS = 125  # read (input/holding) registers: PDU limit

# type -> (registers, struct code)
TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, "h"),
    "uint16": (1, "H"),
    "int32": (2, "i"),
    "uint32": (2, "I"),
    "float32": (2, "f"),
    "int64": (4, "q"),
    "uint64": (4, "Q"),
}

# A point name and the map's [meter] table -> None, or ValueError saying what is wrong.
PointCheck = Callable[[str, Mapping[str, Any]], None]

_METER_KEYS = {
    "name",
    "source",
    "phases",
    "function",
    "word_order",
    "byte_order",
    "max_registers",
    "max_gap",
    "index_max",
    "not_implemented",
}
_POINT_KEYS = {"address", "type", "scale", "sign", "scale_register"}


class MapError(ValueError):
    """A register map that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PointMap:
    name: str  # vocabulary name
    address: int
    type: str
    scale: float = 1.0
    sign: int = 1
    scale_register: int | None = None  # SunSpec: int16 power-of-ten exponent

    @property
    def count(self) -> int:
        return TYPES[self.type][0]


@dataclass(frozen=True)
class Block:
    """One read request: `count` registers from `start`."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class RegisterMap:
    name: str
    origin: str  # the file it came from
    points: dict[str, PointMap]
    function: int = 4  # 3 holding, 4 input registers
    phases: int = 3
    word_order: str = "big"  # big: high word first
    byte_order: str = "big"  # big: high byte first within a register
    max_registers: int = MODBUS_MAX_REGISTERS
    max_gap: int = 0  # unused registers a request may span to save a request
    index_max: float = 0.0
    not_implemented: str = "none"  # "sunspec": SunSpec's markers mean "no value"
    source: str = ""
    blocks: tuple[Block, ...] = field(default=(), compare=False)

    @property
    def scale_registers(self) -> set[int]:
        return {p.scale_register for p in self.points.values() if p.scale_register is not None}

    def plan(self) -> tuple[Block, ...]:
        """Contiguous reads covering every point and scale register, as few as the meter's
        request size and gap allowance let."""
        spans = sorted(
            {(p.address, p.count) for p in self.points.values()}
            | {(a, 1) for a in self.scale_registers}
        )
        blocks: list[list[int]] = []
        for start, count in spans:
            end = start + count
            if blocks:
                cur = blocks[-1]
                if start - cur[1] <= self.max_gap and max(end, cur[1]) - cur[0] <= (
                    self.max_registers
                ):
                    cur[1] = max(cur[1], end)
                    continue
            blocks.append([start, end])
        return tuple(Block(s, e - s) for s, e in blocks)

    # -- decoding ----------------------------------------------------------------------------

    def decode(self, registers: Mapping[int, int]) -> dict[str, float]:
        """Registers by address -> point values (in the map's unit and sign). Points the device
        marks as not implemented are left out."""
        out: dict[str, float] = {}
        for name, p in self.points.items():
            words = [registers[a] for a in range(p.address, p.address + p.count)]
            raw = self._unpack(p.type, words)
            factor = p.scale * p.sign
            if self.not_implemented == "sunspec" and not is_implemented(p.type, raw):
                continue
            if p.scale_register is not None:
                sf = self._unpack("int16", [registers[p.scale_register]])
                if self.not_implemented == "sunspec" and not is_implemented("sunssf", sf):
                    continue
                factor *= 10.0**sf
            if isinstance(raw, float) and not math.isfinite(raw):
                continue
            out[name] = raw * factor
        return out

    def encode(
        self, values: Mapping[str, float], scale_factors: Mapping[int, int] | None = None
    ) -> dict[int, int]:
        """Point values -> registers by address (the inverse of `decode`), with the given
        SunSpec scale factors by scale-register address (default 0)."""
        sfs = dict(scale_factors or {})
        regs: dict[int, int] = {a: _to_u16(sfs.get(a, 0)) for a in self.scale_registers}
        for name, value in values.items():
            p = self.points[name]
            factor = p.scale * p.sign
            if p.scale_register is not None:
                factor *= 10.0 ** sfs.get(p.scale_register, 0)
            raw: float | int = value / factor
            if p.type != "float32":
                raw = int(round(raw))
            for i, word in enumerate(self._pack(p.type, raw)):
                regs[p.address + i] = word
        return regs

    def _unpack(self, type_: str, words: list[int]) -> float | int:
        if self.word_order == "little":
            words = words[::-1]
        data = b"".join(_word_bytes(w, self.byte_order) for w in words)
        (value,) = struct.unpack(">" + TYPES[type_][1], data)
        return value

    def _pack(self, type_: str, value: float | int) -> list[int]:
        data = struct.pack(">" + TYPES[type_][1], value)
        words = [
            int.from_bytes(data[i : i + 2], "big" if self.byte_order == "big" else "little")
            for i in range(0, len(data), 2)
        ]
        return words[::-1] if self.word_order == "little" else words


def _word_bytes(word: int, byte_order: str) -> bytes:
    return word.to_bytes(2, "big" if byte_order == "big" else "little")


def _to_u16(value: int) -> int:
    return value & 0xFFFF


# -- loading ---------------------------------------------------------------------------------


def shipped_maps(dirs: Iterable[Path]) -> dict[str, Path]:
    """The maps in `dirs` (an extension's own), by name (file stem); earlier dirs win."""
    found: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(Path(d).glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def resolve_map(
    ref: str,
    base_dir: Path | None = None,
    shipped_dirs: Iterable[Path] = (),
    *,
    check_point: PointCheck | None = None,
) -> RegisterMap:
    """A shipped map by name (`eastron_sdm630`, looked up in `shipped_dirs`) or a map file by
    path (relative paths from `base_dir`, e.g. the site config's directory)."""
    shipped = shipped_maps(shipped_dirs)
    if ref in shipped:
        return load_map(shipped[ref], check_point=check_point)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix != ".toml" and not path.exists():
        raise MapError(
            f"no register map {ref!r}: not a shipped map ({', '.join(shipped)}) nor a file"
        )
    return load_map(path, check_point=check_point)


def load_map(path: str | Path, *, check_point: PointCheck | None = None) -> RegisterMap:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MapError(f"cannot read register map {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise MapError(f"{path}: not valid TOML: {err}") from err
    return parse_map(doc, str(path), check_point=check_point)


def parse_map(
    doc: Mapping[str, Any], origin: str, *, check_point: PointCheck | None = None
) -> RegisterMap:
    """Check a map document (already parsed TOML) and build the `RegisterMap`; `check_point`
    vets each point name (any name goes without it)."""
    unknown = set(doc) - {"meter", "points"}
    if unknown:
        raise MapError(f"{origin}: unknown table(s) {sorted(unknown)} (expected [meter], [points])")
    meter = doc.get("meter")
    if not isinstance(meter, Mapping):
        raise MapError(f"{origin}: missing [meter] table")
    bad = set(meter) - _METER_KEYS
    if bad:
        raise MapError(
            f"{origin}: unknown key(s) {sorted(bad)} in [meter]; known: {sorted(_METER_KEYS)}"
        )
    where = f"{origin} [meter]"
    name = _get(meter, "name", str, where, required=True)
    function = _get(meter, "function", int, where, default=4)
    _choice(function, (3, 4), "function", where)
    phases = _get(meter, "phases", int, where, default=3)
    _choice(phases, (1, 3), "phases", where)
    word_order = _get(meter, "word_order", str, where, default="big")
    _choice(word_order, ("big", "little"), "word_order", where)
    byte_order = _get(meter, "byte_order", str, where, default="big")
    _choice(byte_order, ("big", "little"), "byte_order", where)
    max_registers = _get(meter, "max_registers", int, where, default=MODBUS_MAX_REGISTERS)
    if not 1 <= max_registers <= MODBUS_MAX_REGISTERS:
        raise MapError(f"{where}: max_registers must be 1..125, not {max_registers}")
    max_gap = _get(meter, "max_gap", int, where, default=0)
    if max_gap < 0:
        raise MapError(f"{where}: max_gap must be >= 0, not {max_gap}")
    index_max = float(_get(meter, "index_max", (int, float), where, default=0.0))
    if index_max < 0:
        raise MapError(f"{where}: index_max must be >= 0, not {index_max}")
    not_impl = _get(meter, "not_implemented", str, where, default="none")
    _choice(not_impl, ("none", "sunspec"), "not_implemented", where)

    raw_points = doc.get("points")
    if not isinstance(raw_points, Mapping) or not raw_points:
        raise MapError(f"{origin}: missing or empty [points] table")
    points = {
        pname: _parse_point(pname, spec, origin, meter, check_point)
        for pname, spec in raw_points.items()
    }
    _check_overlaps(points, origin)
    m = RegisterMap(
        name=name,
        origin=origin,
        points=points,
        function=function,
        phases=phases,
        word_order=word_order,
        byte_order=byte_order,
        max_registers=max_registers,
        max_gap=max_gap,
        index_max=index_max,
        not_implemented=not_impl,
        source=_get(meter, "source", str, where, default=""),
    )
    for a in m.scale_registers:
        if a in _occupied(points):
            raise MapError(f"{origin}: scale_register {a} is also a point's register")
    object.__setattr__(m, "blocks", m.plan())
    return m


def _parse_point(
    name: str,
    spec: Any,
    origin: str,
    header: Mapping[str, Any],
    check_point: PointCheck | None,
) -> PointMap:
    where = f"{origin} [points.{name}]"
    if check_point is not None:
        try:
            check_point(name, header)
        except ValueError as err:
            raise MapError(f"{where}: {err}") from err
    if not isinstance(spec, Mapping):
        raise MapError(f'{where}: must be a table like {{ address = 0, type = "float32" }}')
    bad = set(spec) - _POINT_KEYS
    if bad:
        raise MapError(f"{where}: unknown key(s) {sorted(bad)}; known: {sorted(_POINT_KEYS)}")
    address = _get(spec, "address", int, where, required=True)
    type_ = _get(spec, "type", str, where, required=True)
    if type_ not in TYPES:
        raise MapError(f"{where}: type {type_!r} is not one of {sorted(TYPES)}")
    if not 0 <= address <= 0xFFFF - TYPES[type_][0] + 1:
        raise MapError(f"{where}: address {address} outside 0..65535")
    scale = float(_get(spec, "scale", (int, float), where, default=1.0))
    if not math.isfinite(scale) or scale == 0:
        raise MapError(f"{where}: scale must be a finite non-zero number, not {scale}")
    sign = _get(spec, "sign", int, where, default=1)
    _choice(sign, (1, -1), "sign", where)
    scale_register = _get(spec, "scale_register", int, where, default=None)
    if scale_register is not None and not 0 <= scale_register <= 0xFFFF:
        raise MapError(f"{where}: scale_register {scale_register} outside 0..65535")
    return PointMap(name, address, type_, scale, sign, scale_register)


def _occupied(points: Mapping[str, PointMap]) -> dict[int, str]:
    taken: dict[int, str] = {}
    for p in points.values():
        for a in range(p.address, p.address + p.count):
            taken[a] = p.name
    return taken


def _check_overlaps(points: Mapping[str, PointMap], origin: str) -> None:
    taken: dict[int, str] = {}
    for p in points.values():
        for a in range(p.address, p.address + p.count):
            if a in taken:
                raise MapError(f"{origin}: points {taken[a]} and {p.name} share register {a}")
            taken[a] = p.name


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    *,
    required: bool = False,
    default: Any = None,
) -> Any:
    if key not in table:
        if required:
            raise MapError(f"{where}: missing key {key!r}")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise MapError(f"{where}: {key} must be {names}, not {value!r}")
    return value


def _choice(value: Any, allowed: tuple[Any, ...], key: str, where: str) -> None:
    if value not in allowed:
        raise MapError(f"{where}: {key} must be one of {list(allowed)}, not {value!r}")
