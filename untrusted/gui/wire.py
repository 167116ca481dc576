"""What the GUI sends a page, as JSON the browser accepts: a value that is not finite (NaN,
±Infinity) would come out of json.dumps as `NaN`, which JSON.parse rejects, losing the whole
message; it goes as null ("—" on the page) instead."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps"]


def dumps(message: Any) -> str:
    # allow_nan=False: a non-finite value missed here is an error, never a page's broken message.
    return json.dumps(_finite(message), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
