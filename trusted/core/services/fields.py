"""Checks of request fields shared by the services: point names, globs, watch options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smx.names import Glob, GlobSet, InvalidName, validate_point_name
from smx.timestamps import duration_s
from trusted.core.errors import CoreError

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "MAX_HEARTBEAT_S",
    "MAX_WATCH_PATTERNS",
    "check_patterns",
    "globs",
    "heartbeat_s",
    "point_name",
]

# Patterns in one watch: each is compiled and matched against every point name.
MAX_WATCH_PATTERNS = 64
# An idle watch re-checks its caller (revocation, policy) when a heartbeat is due, so the
# longest interval bounds how long a revoked client keeps an idle stream.
DEFAULT_HEARTBEAT_S, MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 10.0, 0.1, 60.0


def point_name(name: str) -> str:
    try:
        return validate_point_name(name)
    except InvalidName as err:
        raise CoreError("INVALID_POINT_NAME", str(err), point=name[:300]) from err


def check_patterns(patterns: Sequence[str]) -> None:
    if len(patterns) > MAX_WATCH_PATTERNS:
        raise CoreError(
            "REQUEST_TOO_LARGE",
            f"{len(patterns)} patterns in one watch; the limit is {MAX_WATCH_PATTERNS}",
        )


def globs(patterns: Sequence[str]) -> GlobSet:
    """The patterns of a request as one set; empty means every name."""
    patterns = list(patterns) or ["**"]
    try:
        for p in patterns:
            Glob(p)
        return GlobSet(patterns)
    except InvalidName as err:
        raise CoreError("INVALID_POINT_NAME", str(err)) from err


def heartbeat_s(req: Any) -> float:
    """A watch request's idle interval between heartbeats, in seconds."""
    if not req.HasField("heartbeat_interval"):
        return DEFAULT_HEARTBEAT_S
    heartbeat = duration_s(req.heartbeat_interval)
    if heartbeat < MIN_HEARTBEAT_S:
        raise CoreError("INVALID_ARGUMENT", "heartbeat_interval must be at least 100 ms")
    if heartbeat > MAX_HEARTBEAT_S:
        raise CoreError(
            "INVALID_ARGUMENT", f"heartbeat_interval must be at most {MAX_HEARTBEAT_S:g} s"
        )
    return heartbeat
