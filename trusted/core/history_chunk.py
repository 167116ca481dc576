"""The compressed chunk: the samples of one point over a span of time, as one SQLite blob.

Layout (docs/CORE.md, "History on disk"), all little-endian, the whole zlib-compressed:
``<BI`` value encoding and count, then the timestamp deltas (``q``, the first relative to the
chunk's first_ts), the qualities (``i``), then the values: ``d`` floats, ``q`` ints, ``B``
bools, or a JSON list when a chunk mixes types or holds strings. Decoding is C-level work
(zlib, array.frombytes, itertools.accumulate), never a Python loop over samples.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate

__all__ = ["Columns", "decode", "encode"]

Value = float | int | bool | str
# ts, values, qualities: sorted by ts, one sample per ts.
Columns = tuple[array, Sequence[Value], array]

_HEAD = struct.Struct("<BI")
_FLOAT, _INT, _BOOL, _JSON = 0, 1, 2, 3
_SWAP = sys.byteorder != "little"
LEVEL = 6


def _le(a: array) -> bytes:
    if _SWAP:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from_le(code: str, data: bytes | memoryview) -> array:
    a = array(code)
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


def encode(ts: Sequence[int], values: Sequence[Value], qs: Sequence[int]) -> bytes:
    """The blob of samples sorted by ts (first ts is the chunk's first_ts)."""
    n = len(ts)
    deltas = array("q", [0]) if n else array("q")
    deltas.extend(b - a for a, b in zip(ts, ts[1:], strict=False))
    types = set(map(type, values))
    if types <= {float}:
        enc, body = _FLOAT, _le(array("d", values))
    elif types == {int}:
        enc, body = _INT, _le(array("q", values))
    elif types == {bool}:
        enc, body = _BOOL, bytes(values)  # type: ignore[arg-type]
    else:
        enc, body = _JSON, json.dumps(list(values), separators=(",", ":")).encode()
    raw = b"".join((_HEAD.pack(enc, n), _le(deltas), _le(array("i", qs)), body))
    return zlib.compress(raw, LEVEL)


def decode(first_ts: int, blob: bytes) -> Columns:
    raw = memoryview(zlib.decompress(blob))
    enc, n = _HEAD.unpack_from(raw)
    at = _HEAD.size
    deltas = _from_le("q", raw[at : at + 8 * n])
    at += 8 * n
    if n:
        deltas[0] = first_ts
    ts = array("q", accumulate(deltas))
    qs = _from_le("i", raw[at : at + 4 * n])
    at += 4 * n
    body = raw[at:]
    values: Sequence[Value]
    if enc == _FLOAT:
        values = _from_le("d", body)
    elif enc == _INT:
        values = _from_le("q", body)
    elif enc == _BOOL:
        values = list(map(bool, bytes(body)))
    else:
        values = json.loads(bytes(body))
    if len(ts) != n or len(qs) != n or len(values) != n:
        raise ValueError(f"corrupt history chunk: {n} samples announced")
    return ts, values, qs
