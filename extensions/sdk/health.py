"""Health of an extension: a JSON heartbeat file for the supervisor, and the same as points in
the core (`<name>/ext.state`, `<name>/ext.devices_ok`) for everybody else."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["write_health_file"]


def write_health_file(
    path: Path, state: str, core_connected: bool, last_error: str, devices: dict[str, Any]
) -> None:
    """Atomically replace the heartbeat file (the supervisor may read it at any moment)."""
    body = {
        "state": state,
        "ts": time.time(),
        "core_connected": core_connected,
        "last_error": last_error,
        "devices": devices,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)
