"""WatchPoints messages as bytes, built from each point serialized once.

A change watched by 20 streams was copied into 20 response messages and serialized 20 times.
Now the current value of each point is serialized once, when the first stream sends it, and
kept beside the point while it is current; a message is the concatenation of its points'
bytes with the tags of `WatchPointsResponse`, which is exactly how protobuf writes a
`repeated Point points = 1` field (checked byte for byte by tests/trusted/test_watch_wire.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from smx.v1 import point_pb2

__all__ = ["WatchWire"]

# WatchPointsResponse: points = 1 (length-delimited), revision = 2, snapshot = 3, heartbeat = 4
# (varints); proto3 leaves out a field at its default.
_POINT_TAG = b"\x0a"
_REVISION_TAG = b"\x10"
_SNAPSHOT = b"\x18\x01"
_HEARTBEAT = b"\x20\x01"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class WatchWire:
    """Serialized points and WatchPointsResponse messages for every stream of one core.
    `current` is the realtime database's name -> Point: only a point still current is kept
    serialized (an older revision still waiting in a watcher is serialized when sent)."""

    def __init__(self, current: Mapping[str, point_pb2.Point]) -> None:
        self._current = current
        self._bytes: dict[str, tuple[point_pb2.Point, bytes]] = {}

    def point(self, point: point_pb2.Point) -> bytes:
        name = point.name
        hit = self._bytes.get(name)
        if hit is not None and hit[0] is point:
            return hit[1]
        data = point.SerializeToString()
        if self._current.get(name) is point:
            self._bytes[name] = (point, data)
        return data

    def message(
        self,
        points: Iterable[point_pb2.Point],
        revision: int,
        *,
        snapshot: bool = False,
        heartbeat: bool = False,
    ) -> bytes:
        parts: list[bytes] = []
        for p in points:
            data = self.point(p)
            parts += (_POINT_TAG, _varint(len(data)), data)
        if revision:
            parts += (_REVISION_TAG, _varint(revision))
        if snapshot:
            parts.append(_SNAPSHOT)
        if heartbeat:
            parts.append(_HEARTBEAT)
        return b"".join(parts)
