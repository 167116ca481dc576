"""The health file: how an extension or agent tells the supervisor how it is doing.

The process rewrites ``SMX_HEALTH_FILE`` (atomically: temp file and rename) every
`WRITE_PERIOD_S`, and once more on every change of state::

    {"state": "starting|running|degraded|stopping|failed", "ts": <unix seconds>,
     "core_connected": true|false, "last_error": "...",
     "devices": {"<device>": {"ok": true, "last_error": "", "failures": 0}}}

``degraded`` is a process doing its job with something missing (a dead meter, the core away);
``failed`` is a process that cannot do its job (e.g. the core refuses its certificate) and says
so while it is still running. The supervisor reads the file with `read_health_file` and counts a
report older than `FRESH_S` as no heartbeat; `smx status` shows the state.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smx.files import read_regular_file

__all__ = [
    "FRESH_S",
    "HEALTHY_STATES",
    "MAX_FILE_BYTES",
    "STATES",
    "WRITE_PERIOD_S",
    "DeviceHealth",
    "HealthReport",
    "read_health_file",
    "write_health_file",
]

STATES = ("starting", "running", "degraded", "stopping", "failed")
# Doing its job, possibly with something missing: counts as up for the supervisor's restart
# back-off (a process with one dead meter must not wait the longest back-off after a crash).
HEALTHY_STATES = frozenset({"running", "degraded"})
# Every rewrite costs the SD card a 4 KB block and a journal commit (at 2 s, ~190 MB a day per
# process): a change of state is written at once, the heartbeat only this often.
WRITE_PERIOD_S = 10.0
# Several missed writes, not one slow event loop turn.
FRESH_S = 35.0
_MAX_ERROR = 300
# A report is a few hundred bytes, a thousand devices some 100 KB: more is not a health file.
MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class DeviceHealth:
    ok: bool
    last_error: str = ""
    failures: int = 0


@dataclass(frozen=True)
class HealthReport:
    state: str
    ts: float = field(default_factory=time.time)
    core_connected: bool | None = None
    last_error: str = ""
    devices: Mapping[str, DeviceHealth] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"health state {self.state!r}: one of {', '.join(STATES)}")

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY_STATES

    def fresh(self, now: float | None = None) -> bool:
        return abs((time.time() if now is None else now) - self.ts) <= FRESH_S

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "ts": self.ts,
            "core_connected": self.core_connected,
            "last_error": self.last_error,
            "devices": {
                name: {"ok": d.ok, "last_error": d.last_error, "failures": d.failures}
                for name, d in self.devices.items()
            },
        }

    @classmethod
    def from_json(cls, raw: Any) -> HealthReport | None:
        """The report in a decoded health file; None when it is not the documented shape."""
        if not isinstance(raw, dict):
            return None
        state, ts = raw.get("state"), raw.get("ts")
        if state not in STATES or not isinstance(ts, int | float) or isinstance(ts, bool):
            return None
        connected, error = raw.get("core_connected"), raw.get("last_error")
        devices = raw.get("devices")
        return cls(
            state=state,
            ts=float(ts),
            core_connected=connected if isinstance(connected, bool) else None,
            last_error=error[:_MAX_ERROR] if isinstance(error, str) else "",
            devices=_devices(devices) if isinstance(devices, dict) else {},
        )


def _devices(raw: dict[Any, Any]) -> dict[str, DeviceHealth]:
    out = {}
    for name, d in raw.items():
        if isinstance(name, str) and isinstance(d, dict):
            error, failures = d.get("last_error"), d.get("failures")
            out[name] = DeviceHealth(
                ok=d.get("ok") is True,
                last_error=error[:_MAX_ERROR] if isinstance(error, str) else "",
                failures=failures if type(failures) is int else 0,
            )
    return out


def write_health_file(path: Path, report: HealthReport) -> None:
    """Replace the file atomically: the supervisor may read it at any moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report.to_json()))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_health_file(path: Path) -> HealthReport | None:
    """The file's report, or None when it is missing or not the documented JSON.

    The supervisor reads files that processes it does not trust write (smx.files: a regular
    file of at most `MAX_FILE_BYTES`, no link, no FIFO), and JSON nested too deep is refused like
    any other bad JSON.
    """
    data = read_regular_file(path, MAX_FILE_BYTES)
    if data is None:
        return None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return HealthReport.from_json(raw)
