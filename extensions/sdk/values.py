"""Typed point values and samples, between Python and the API."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from smx.v1 import point_pb2
from smx.values import KINDS, Scalar, from_value, to_value

__all__ = ["KINDS", "QUALITIES", "PointSpec", "Reading", "to_value", "from_value", "timestamp"]

QUALITIES = {
    "GOOD": point_pb2.QUALITY_GOOD,
    "DERIVED": point_pb2.QUALITY_DERIVED,
    "UNCERTAIN": point_pb2.QUALITY_UNCERTAIN,
    "BAD": point_pb2.QUALITY_BAD,
}


@dataclass(frozen=True)
class PointSpec:
    """A point the extension owns, declared once (DATA-MODEL.md names and units)."""

    name: str  # full name, e.g. "battery/P"
    unit: str = ""
    kind: str = "double"  # double | int | bool | string
    period: float | None = None  # expected refresh period in seconds: the core marks STALE
    description: str = ""
    index_max: float = 0.0  # energy indexes: where the register recirculates

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {sorted(KINDS)}, not {self.kind!r}")

    def metadata(self) -> point_pb2.PointMetadata:
        m = point_pb2.PointMetadata(
            name=self.name,
            unit=self.unit,
            kind=KINDS[self.kind],
            description=self.description,
            index_max=self.index_max,
        )
        if self.period:
            m.expected_period.CopyFrom(_duration(self.period))
        return m


@dataclass(frozen=True)
class Reading:
    """A value with its quality and the device's own timestamp, when a poll has them."""

    value: Scalar
    quality: str = "GOOD"
    source_time: float | dt.datetime | None = None  # unix seconds or aware datetime


def timestamp(when: float | dt.datetime | None = None) -> Timestamp:
    ts = Timestamp()
    if isinstance(when, dt.datetime):
        ts.FromDatetime(when.astimezone(dt.UTC))
    else:
        ts.FromNanoseconds(int((time.time() if when is None else when) * 1e9))
    return ts


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
