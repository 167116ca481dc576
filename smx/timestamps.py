"""Time conversions between protobuf Timestamps/Durations and the core's milliseconds, or the
Unix seconds (floats) and aware datetimes that clients use.

Value conversions live in `smx.values` (shared with clients)."""

from __future__ import annotations

import datetime as dt
import time

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = [
    "iso_time",
    "duration_s",
    "ms_to_ts",
    "now_ms",
    "seconds_to_duration",
    "seconds_to_ts",
    "ts_of",
    "ts_to_ms",
    "ts_to_seconds",
]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_ts(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def ts_to_ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def duration_s(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def seconds_to_ts(seconds: float) -> Timestamp:
    """Unix seconds (a float, as `time.time()` gives) as a Timestamp, to the nanosecond the
    float holds."""
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def ts_to_seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def seconds_to_duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def ts_of(when: float | dt.datetime | Timestamp | None = None) -> Timestamp:
    """A Timestamp from what clients hold: Unix seconds, a datetime (a naive one is local time,
    as Python reads it), a Timestamp (copied) or None for now."""
    if when is None:
        return seconds_to_ts(time.time())
    if isinstance(when, Timestamp):
        copy = Timestamp()
        copy.CopyFrom(when)
        return copy
    if isinstance(when, dt.datetime):
        ts = Timestamp()
        ts.FromDatetime(when.astimezone(dt.UTC))
        return ts
    return seconds_to_ts(when)


def iso_time(ts: Timestamp) -> str:
    """A Timestamp as people read it in logs and tables: ISO 8601, UTC, milliseconds."""
    return ts.ToDatetime(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
