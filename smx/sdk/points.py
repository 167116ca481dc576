"""Points as Python sees them: what a point is (`PointSpec`, declared by its owner, listed by
anybody), what it holds (`PointUpdate`, a value read or watched) and held (`HistorySample`)."""

from __future__ import annotations

from dataclasses import dataclass

from smx.quality import quality_name
from smx.timestamps import duration_s, seconds_to_duration, ts_to_seconds
from smx.v1 import point_pb2, point_service_pb2
from smx.values import KIND_OF_FIELD, KINDS, Scalar, from_value

__all__ = ["HistorySample", "PointSpec", "PointUpdate"]

_KIND_NAMES = {code: name for name, code in KINDS.items()}


@dataclass(frozen=True)
class PointSpec:
    """A point's metadata (docs/DATA-MODEL.md names and units)."""

    name: str  # full name, e.g. "battery/P"
    unit: str = ""
    kind: str | None = "double"  # double | int | bool | string; None: left open
    period: float | None = None  # expected refresh period in seconds: the core marks STALE
    description: str = ""
    index_max: float = 0.0  # energy indexes: where the register recirculates
    owner: str = ""  # who declared it, as listed by the core (ignored on declare)

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {sorted(KINDS)}, not {self.kind!r}")

    def metadata(self) -> point_pb2.PointMetadata:
        m = point_pb2.PointMetadata(
            name=self.name,
            unit=self.unit,
            kind=KINDS[self.kind] if self.kind else point_pb2.VALUE_KIND_UNSPECIFIED,
            description=self.description,
            index_max=self.index_max,
        )
        if self.period:
            m.expected_period.CopyFrom(seconds_to_duration(self.period))
        return m

    @classmethod
    def from_metadata(cls, m: point_pb2.PointMetadata) -> PointSpec:
        return cls(
            name=m.name,
            unit=m.unit,
            kind=_KIND_NAMES.get(m.kind),
            period=duration_s(m.expected_period) if m.HasField("expected_period") else None,
            description=m.description,
            index_max=m.index_max,
            owner=m.owner,
        )

    @classmethod
    def of_point(cls, p: point_pb2.Point, *, period: float | None = None) -> PointSpec:
        """What a point written without a declaration tells about itself."""
        return cls(
            name=p.name,
            unit=p.unit,
            kind=_KIND_NAMES.get(
                KIND_OF_FIELD.get(
                    p.value.WhichOneof("kind") or "", point_pb2.VALUE_KIND_UNSPECIFIED
                )
            ),
            period=period,
        )


@dataclass(frozen=True)
class HistorySample:
    """A sample of a point's history: raw, or one bucket of it when downsampled."""

    name: str
    time: float  # unix seconds: the sample's source time, or its bucket's start
    value: Scalar | None
    quality: str  # the sample's, or the worst in the bucket
    count: int  # raw samples in it (1 for a raw sample)

    @classmethod
    def of(cls, name: str, s: point_service_pb2.HistorySample) -> HistorySample:
        time, value = ts_to_seconds(s.sample_time), from_value(s.value)
        return cls(name, time, value, quality_name(s.quality), s.count or 1)


@dataclass(frozen=True)
class PointUpdate:
    """A point's value as the core holds it."""

    name: str
    value: Scalar | None
    unit: str
    quality: str  # GOOD, DERIVED, UNCERTAIN, BAD, STALE
    source_time: float  # unix seconds
    revision: int
    writer: str = ""

    @classmethod
    def of(cls, p: point_pb2.Point) -> PointUpdate:
        return cls(
            p.name,
            from_value(p.value),
            p.unit,
            quality_name(p.quality),
            ts_to_seconds(p.source_time),
            p.revision,
            p.writer,
        )
