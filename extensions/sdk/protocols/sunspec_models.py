"""SunSpec model definitions and decoding: a model's registers -> its points by name, with
scale factors applied and "not implemented" values as None.

The definitions are the SunSpec Alliance's own JSON files as pysunspec2 ships them (PyPI
`pysunspec2`); point names, types, sizes, offsets and scale-factor references come from there,
never from hand-typed tables. Only `sunspec2.mdef` and `sunspec2.mb` are imported (about
0.1 MB); each model's JSON is read the first time that model is decoded and kept (the 17
models an SMA Sunny Boy 3.6 lists: 0.45 MB). Importing `sunspec2.device` would cost 0.8 MB and
reading every definition it ships about 4 MB.

Decoded values: int/uint/enum/bitfield points as int; a point with a scale factor as
float (`raw * 10**sf`); float32/float64 as float; strings without their NUL padding; pad
points left out. Repeating groups become lists of dicts, single groups a dict.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sunspec2
import sunspec2.mb as mb
import sunspec2.mdef as mdef

__all__ = [
    "PointDef",
    "SunSpecError",
    "decode_model",
    "fixed_points",
    "is_implemented",
    "model_definition",
]

_ACCUMULATORS = {mdef.TYPE_ACC16, mdef.TYPE_ACC32, mdef.TYPE_ACC64}


class SunSpecError(Exception):
    """A SunSpec device or register image that cannot be read as SunSpec: no marker, a broken
    model chain, a model shorter than its definition, a model with no known definition."""


def is_implemented(type_: str, raw: int | float | str | None) -> bool:
    """False for SunSpec's "not implemented" markers: 0x8000 (int16, sunssf), 0xFFFF (uint16,
    enum16, bitfield16), 0x80000000 / 0xFFFFFFFF (32 bit), their 64-bit forms, NaN (floats),
    an empty string."""
    if raw is None:
        return False
    if isinstance(raw, float):
        return not math.isnan(raw)
    if type_ in _ACCUMULATORS:
        return True  # 0 is their marker, but also a real counter's first reading: keep it
    info = mb.point_type_info.get(type_)
    return info is None or bool(info.is_impl(raw))


@functools.cache
def model_definition(model_id: int) -> dict[str, Any]:
    """The SunSpec definition of `model_id`, read from pysunspec2 on first use and kept (about
    25 KB a model). Shared: do not modify it."""
    name = mdef.to_json_filename(model_id)
    # Beside the package, not through importlib.resources (zipfile, tempfile, shutil: ~1 MiB
    # of modules in the process for these reads); pysunspec2 installs as plain files.
    resource = Path(sunspec2.__file__).parent / "models" / "json" / name
    try:
        definition: dict[str, Any] = mdef.from_json_str(resource.read_text(encoding="utf-8"))
    except (FileNotFoundError, OSError) as err:
        raise SunSpecError(f"no SunSpec definition of model {model_id} in pysunspec2") from err
    return definition


@dataclass(frozen=True)
class PointDef:
    """One point of a model's top-level group: `offset` counts registers from the model's ID
    register (ID is 0, L is 1, the first data point 2)."""

    name: str
    offset: int
    size: int
    type: str
    sf: str | int | None = None
    units: str = ""
    label: str = ""


def fixed_points(model_id: int) -> dict[str, PointDef]:
    """The points of a model before its repeating groups, by name, with their offsets."""
    out: dict[str, PointDef] = {}
    offset = 0
    for p in model_definition(model_id)[mdef.GROUP].get(mdef.POINTS, []):
        size = int(p.get(mdef.SIZE) or mb.point_type_info[p[mdef.TYPE]].len)
        out[p[mdef.NAME]] = PointDef(
            p[mdef.NAME],
            offset,
            size,
            p[mdef.TYPE],
            p.get(mdef.SF),
            p.get(mdef.UNITS, ""),
            p.get(mdef.LABEL, ""),
        )
        offset += size
    return out


def decode_model(registers: Sequence[int]) -> dict[str, Any]:
    """One model's registers, from its ID register on (`ID`, `L`, then L registers) -> its
    points by name. Raises SunSpecError if the registers do not fit the model's definition."""
    if len(registers) < 2:
        raise SunSpecError(f"a model needs at least its ID and L registers, got {len(registers)}")
    model_id, length = int(registers[0]), int(registers[1])
    if len(registers) < length + 2:
        raise SunSpecError(
            f"model {model_id}: L = {length} but only {len(registers) - 2} registers follow"
        )
    if any(not 0 <= w <= 0xFFFF for w in registers[: length + 2]):
        raise SunSpecError(f"model {model_id}: a register value outside 0..65535")
    data = b"".join(int(w).to_bytes(2, "big") for w in registers[: length + 2])
    group = model_definition(model_id)[mdef.GROUP]
    values, end = _Decoder(model_id, data).group(group, 0, length + 2, ())
    if end < length + 2 and _fills(group):
        raise SunSpecError(f"model {model_id}: {length + 2 - end} registers left over")
    return values


def _fills(group: Mapping[str, Any]) -> bool:
    return any(g.get(mdef.COUNT) == 0 for g in group.get(mdef.GROUPS, []))


class _Decoder:
    """Walks a definition over one model's bytes; `scope` holds the enclosing groups' values,
    innermost first (scale factors and group counts may live in any of them)."""

    def __init__(self, model_id: int, data: bytes) -> None:
        self.model_id = model_id
        self.data = data

    def group(
        self,
        gdef: Mapping[str, Any],
        offset: int,
        end: int,
        scope: tuple[Mapping[str, Any], ...],
    ) -> tuple[dict[str, Any], int]:
        values: dict[str, Any] = {}
        points = gdef.get(mdef.POINTS, [])
        for p in points:
            size = self._size(p)
            if offset + size > end:
                if not scope:
                    break  # a model shorter than its definition (Fronius' common model, L = 65)
                raise SunSpecError(
                    f"model {self.model_id}: point {p[mdef.NAME]} at offset {offset} does not "
                    f"fit in its {end} registers"
                )
            if p[mdef.TYPE] != mdef.TYPE_PAD:
                values[p[mdef.NAME]] = self._point(p[mdef.TYPE], offset, size)
            offset += size
        inner = (values, *scope)
        # A scale factor may follow the points it scales: apply once the group is read.
        for p in points:
            sf = p.get(mdef.SF)
            if sf is not None and isinstance(values.get(p[mdef.NAME]), int):
                values[p[mdef.NAME]] = _scaled(values[p[mdef.NAME]], self._sf(sf, inner))
        for sub in gdef.get(mdef.GROUPS, []):
            name = sub[mdef.NAME]
            if mdef.COUNT not in sub:
                values[name], offset = self.group(sub, offset, end, inner)
                continue
            count = self._count(sub[mdef.COUNT], inner, name)
            values[name], offset = self.repeat(sub, count, offset, end, inner)
        return values, offset

    def repeat(
        self,
        gdef: Mapping[str, Any],
        count: int,
        offset: int,
        end: int,
        scope: tuple[Mapping[str, Any], ...],
    ) -> tuple[list[dict[str, Any]], int]:
        """`count` instances of a group; count 0: as many as fit before the model's end."""
        least = max(1, sum(self._size(p) for p in gdef.get(mdef.POINTS, [])))
        instances: list[dict[str, Any]] = []
        while len(instances) < count if count else end - offset >= least:
            one, after = self.group(gdef, offset, end, scope)
            if after == offset:
                break  # an empty group: never loop on it
            instances.append(one)
            offset = after
        return instances, offset

    def _size(self, p: Mapping[str, Any]) -> int:
        info = mb.point_type_info.get(p[mdef.TYPE])
        if info is None:
            raise SunSpecError(f"model {self.model_id}: unknown point type {p[mdef.TYPE]!r}")
        return int(p.get(mdef.SIZE) or info.len)

    def _point(self, type_: str, offset: int, size: int) -> int | float | str | None:
        chunk = self.data[2 * offset : 2 * (offset + size)]
        if type_ == mdef.TYPE_STRING:
            text = chunk.rstrip(b"\0").decode("utf-8", "replace")
            return text if chunk[:1] != b"\0" and text else None
        raw = mb.point_type_info[type_].data_to(chunk)
        return raw if is_implemented(type_, raw) else None

    def _sf(self, ref: str | int, scope: tuple[Mapping[str, Any], ...]) -> int | None:
        if isinstance(ref, int):
            return ref
        for values in scope:
            if ref in values:
                sf = values[ref]
                return sf if isinstance(sf, int) else None
        raise SunSpecError(f"model {self.model_id}: scale factor {ref} not in the model")

    def _count(self, ref: str | int, scope: tuple[Mapping[str, Any], ...], name: str) -> int:
        if isinstance(ref, int):
            return ref
        for values in scope:
            if ref in values:
                count = values[ref]
                if not isinstance(count, int):
                    raise SunSpecError(f"model {self.model_id}: group {name} count {ref} unset")
                return count
        raise SunSpecError(f"model {self.model_id}: group {name} count {ref} not in the model")


def _scaled(raw: int, sf: int | None) -> float | None:
    if sf is None or not -10 <= sf <= 10:
        return None  # not implemented, or outside the -10..10 SunSpec allows: no value
    # Dividing by an exact power of ten gives the nearest float to the decimal (123.4, not
    # 123.40000000000001 from multiplying by 0.1).
    return raw / 10 ** (-sf) if sf < 0 else float(raw * 10**sf)
