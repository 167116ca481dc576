"""Quality names of point samples (docs/DATA-MODEL.md) and the API's enum, both ways.

GOOD, DERIVED, UNCERTAIN and BAD are written by the owner of a point; STALE is set by the core
only (a write carrying it is refused), so it is a name a reader sees but never a writer's choice.
"""

from __future__ import annotations

from smx.v1 import point_pb2

__all__ = ["QUALITIES", "WRITABLE_QUALITIES", "quality_code", "quality_name"]

# Name -> the API's enum, for every quality a reader may see.
QUALITIES: dict[str, point_pb2.Quality] = {
    "GOOD": point_pb2.QUALITY_GOOD,
    "DERIVED": point_pb2.QUALITY_DERIVED,
    "UNCERTAIN": point_pb2.QUALITY_UNCERTAIN,
    "BAD": point_pb2.QUALITY_BAD,
    "STALE": point_pb2.QUALITY_STALE,
}
WRITABLE_QUALITIES = frozenset(QUALITIES) - {"STALE"}
_NAMES: dict[int, str] = {code: name for name, code in QUALITIES.items()}


def quality_name(code: int) -> str:
    """`GOOD` ... `STALE` for the API's enum; `UNSPECIFIED` for anything else."""
    return _NAMES.get(code, "UNSPECIFIED")


def quality_code(name: str) -> point_pb2.Quality:
    """The API's enum for a quality a writer may send; ValueError (naming the choices) else."""
    if name not in WRITABLE_QUALITIES:
        raise ValueError(
            f"quality {name!r}: a writer sends one of {', '.join(sorted(WRITABLE_QUALITIES))} "
            "(STALE is set by the core only)"
        )
    return QUALITIES[name]
