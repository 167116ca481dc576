"""How ReadHistory downsamples (proto/smx/v1/point_service.proto): the aggregation names that the
CLI, the SDK and the core's history use, and the API's enum for each."""

from __future__ import annotations

from smx.v1 import point_service_pb2 as pb

__all__ = ["AGGREGATIONS", "aggregation_code", "aggregation_name"]

# Name -> the API's enum: of the numeric samples in each bucket, the least, the greatest, the
# mean, or the last in time.
AGGREGATIONS: dict[str, pb.Aggregation] = {
    "min": pb.AGGREGATION_MIN,
    "max": pb.AGGREGATION_MAX,
    "avg": pb.AGGREGATION_AVG,
    "last": pb.AGGREGATION_LAST,
}
_NAMES: dict[int, str] = {code: name for name, code in AGGREGATIONS.items()}
_NAMES[pb.AGGREGATION_UNSPECIFIED] = "avg"  # the default


def aggregation_code(name: str) -> pb.Aggregation:
    """The API's enum for `name`; ValueError naming the choices else."""
    if name not in AGGREGATIONS:
        raise ValueError(f"aggregation {name!r}: one of {', '.join(AGGREGATIONS)}")
    return AGGREGATIONS[name]


def aggregation_name(code: int) -> str | None:
    """The name of the API's enum (unset is avg, the default); None for a code not known here."""
    return _NAMES.get(code)
