"""The example battery's wire protocol: one request line, one reply line, JSON.

    {"op": "read"}                 -> {"P": -1200.0, "SoC": 63.5, "state": "DISCHARGING"}
    {"op": "set", "P": 3000.0}     -> {"P": 3000.0}          (the power the battery accepted)
    anything else                  -> {"error": "..."}

Power follows docs/DATA-MODEL.md: load reference, P > 0 charging.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["encode", "decode"]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {line[:80]!r}")
    return message
