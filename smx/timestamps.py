"""Time conversions between protobuf Timestamps/Durations and the core's milliseconds.

Value conversions live in `smx.values` (shared with clients)."""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["now_ms", "ms_to_ts", "ts_to_ms", "duration_s"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_ts(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def ts_to_ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def duration_s(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9
