"""The recent-samples segment: what each flush made durable since the last compaction, in one
file next to the database (``<db>-seg``), written sequentially and fdatasync'ed.

Why a file of its own: SQLite keeps rows in key order, so a flush of a few hundred points
rewrites a page per point; here a flush writes only its own bytes. Format (docs/CORE.md,
"History on disk"): records start on 4 KB boundaries (a flush never rewrites a block that holds
an earlier, synced record); each is a header ``<4sIQII`` (magic, generation, sequence number,
body length, CRC-32 of header and body) and a zlib-compressed body. The file is overwritten in
place from offset 0 after each compaction, with the next generation: it neither grows nor is
zero-filled in steady state, so fdatasync has no metadata to write. Recovery reads records of
the database's current generation with consecutive sequence numbers from offset 0 and stops at
the first that does not check: a torn or stale tail is dropped, never misread.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BLOCK", "Record", "Segment", "build", "read_records", "segment_path"]

log = logging.getLogger(__name__)

Value = float | int | bool | str
MAGIC = b"SMXh"
BLOCK = 4096
_HEAD = struct.Struct("<4sIQII")
_COUNTS = struct.Struct("<IIII")
_LEN = struct.Struct("<I")
_SWAP = sys.byteorder != "little"
_I64 = (-(2**63), 2**63 - 1)
_I32 = (-(2**31), 2**31 - 1)
LEVEL = 6


def segment_path(db: Path) -> Path:
    return db.with_name(db.name + "-seg")


@dataclass(slots=True)
class Record:
    samples: list[tuple[str, int, Value, int]] = field(default_factory=list)
    last: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)


def _ok(name: object, ts: object, v: object, q: object) -> str | None:
    """Why a sample cannot be stored, or None."""
    t = type(v)
    if t is str:
        try:
            v.encode()  # type: ignore[attr-defined]
        except UnicodeError:
            return "a string that is not UTF-8"
    elif t is int:
        if not _I64[0] <= v <= _I64[1]:  # type: ignore[operator]
            return "an int beyond 64 bits"
    elif t is not float and t is not bool:
        return f"value type {t.__name__}"
    if type(ts) is not int or not _I64[0] <= ts <= _I64[1]:
        return f"bad ts_ms {ts!r}"
    if type(q) is not int or not _I32[0] <= q <= _I32[1]:
        return f"bad quality {q!r}"
    if type(name) is not str:
        return "a name that is not a string"
    return None


def _blobs(blobs: Mapping[str, object], what: str) -> dict[str, bytes]:
    out = {}
    for name, blob in blobs.items():
        if isinstance(blob, bytes | bytearray | memoryview):
            out[name] = bytes(blob)
        else:
            log.warning(
                "history: dropped %s of %r: not bytes but %s", what, name, type(blob).__name__
            )
    return out


def _le(a: array) -> bytes:
    if _SWAP:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def build(
    samples: Iterable[tuple[str, int, Value, int]],
    last: Mapping[str, object],
    meta: Mapping[str, object],
) -> tuple[Record, bytes, int]:
    """Check a flush's rows (bad ones dropped and logged) and encode them: (the clean record,
    its uncompressed body, rows rejected)."""
    rec = Record(last=_blobs(last, "snapshot"), meta=_blobs(meta, "metadata"))
    rejected = 0
    index: dict[str, int] = {}
    idx, tss, qs, fl, mask = array("I"), array("q"), array("i"), array("d"), array("B")
    objs: list[Value] = []
    for sample in samples:
        name, ts, v, q = sample
        why = _ok(name, ts, v, q)
        if why is not None:
            rejected += 1
            log.warning("history: dropped sample of %r: %s", name, why)
            continue
        rec.samples.append(sample)
        idx.append(index.setdefault(name, len(index)))
        tss.append(ts)
        qs.append(q)
        if type(v) is float:
            fl.append(v)
            mask.append(0)
        else:
            fl.append(0.0)
            mask.append(1)
            objs.append(v)
    for blobs in (rec.last, rec.meta):
        for name in blobs:
            index.setdefault(name, len(index))
    parts = [
        _COUNTS.pack(len(index), len(idx), len(rec.last), len(rec.meta)),
        *_framed(json.dumps(list(index)).encode()),
        _le(idx),
        _le(tss),
        _le(qs),
        _le(fl),
        mask.tobytes(),
        *_framed(json.dumps(objs).encode()),
    ]
    for blobs in (rec.last, rec.meta):
        parts.append(_le(array("I", [index[n] for n in blobs])))
        parts.append(_le(array("I", map(len, blobs.values()))))
        parts.extend(blobs.values())
    return rec, b"".join(parts), rejected


def _framed(data: bytes) -> tuple[bytes, bytes]:
    return _LEN.pack(len(data)), data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.data):
            raise ValueError("record body too short")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def array(self, code: str, n: int) -> array:
        a = array(code)
        a.frombytes(self.take(a.itemsize * n))
        if _SWAP:
            a.byteswap()
        return a

    def framed(self) -> bytes:
        (n,) = _LEN.unpack(self.take(_LEN.size))
        return bytes(self.take(n))


def parse(body: bytes) -> Record:
    r = _Reader(body)
    n_names, n, n_last, n_meta = _COUNTS.unpack(r.take(_COUNTS.size))
    names: list[str] = json.loads(r.framed())
    if len(names) != n_names:
        raise ValueError("record names do not match their count")
    idx, tss, qs = r.array("I", n), r.array("q", n), r.array("i", n)
    fl, mask = r.array("d", n), r.take(n)
    objs = iter(json.loads(r.framed()))
    rec = Record()
    rec.samples = [
        (names[i], t, next(objs) if m else v, q)
        for i, t, q, v, m in zip(idx, tss, qs, fl, mask, strict=True)
    ]
    for count, blobs in ((n_last, rec.last), (n_meta, rec.meta)):
        which, lens = r.array("I", count), r.array("I", count)
        for i, size in zip(which, lens, strict=True):
            blobs[names[i]] = bytes(r.take(size))
    return rec


class Segment:
    """The open segment file of the writer thread. Not thread-safe: one writer."""

    def __init__(self, path: Path, gen: int, end: int = 0, seq: int = 0) -> None:
        self.path = path
        self.gen = gen
        self.seq = seq
        self.end = end  # where the next record goes; a multiple of BLOCK
        self.bytes_written = 0
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(path, flags, 0o600)

    def append(self, body: bytes) -> None:
        """Write one record and wait until it is on disk (fdatasync)."""
        if self._fd is None:
            raise OSError(f"history segment {self.path} is closed")
        data = zlib.compress(body, LEVEL)
        head = _HEAD.pack(MAGIC, self.gen, self.seq, len(data), 0)[: -_LEN.size]
        crc = zlib.crc32(data, zlib.crc32(head))
        rec = head + _LEN.pack(crc) + data
        os.pwrite(self._fd, rec, self.end)
        os.fdatasync(self._fd)
        self.end += -(-len(rec) // BLOCK) * BLOCK
        self.seq += 1
        self.bytes_written += len(rec)

    def reset(self, gen: int) -> None:
        """Start over at offset 0 with generation `gen` (the previous one is compacted)."""
        self.gen, self.seq, self.end = gen, 0, 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_records(path: Path, gen: int) -> tuple[list[Record], int, int]:
    """The valid records of generation `gen`: (records, end offset, bytes after them that
    looked like a record of this generation but did not check)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    records: list[Record] = []
    at = 0
    while at + _HEAD.size <= len(data):
        magic, g, seq, size, crc = _HEAD.unpack_from(data, at)
        if magic != MAGIC or g != gen or seq != len(records):
            return records, at, 0
        start = at + _HEAD.size
        body = data[start : start + size]
        head = data[at : start - _LEN.size]
        if len(body) != size or zlib.crc32(body, zlib.crc32(head)) != crc:
            return records, at, len(data) - at
        try:
            records.append(parse(zlib.decompress(body)))
        except (ValueError, zlib.error, UnicodeError, StopIteration, IndexError) as err:
            # A record that checks but does not parse: a bug, not a torn write. Keep what
            # came before and say so.
            log.error("history segment %s: record %d unreadable: %s", path, seq, err)
            return records, at, len(data) - at
        at += -(-(_HEAD.size + size) // BLOCK) * BLOCK
    return records, at, 0
