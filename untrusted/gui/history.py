"""A point's last 24 h for the chart: ReadHistory averaged into 5-minute buckets by the core
(288 samples, whatever the point's rate), so a page never pulls a day of raw samples."""

from __future__ import annotations

import time
from math import isfinite
from typing import Any

from smx.sdk import Client

__all__ = ["DAY_S", "day_of"]

DAY_S = 24 * 3600.0
BUCKET_S = 300.0
CALL_TIMEOUT_S = 10.0


async def day_of(client: Client, name: str, *, now: float | None = None) -> dict[str, Any]:
    """{"type": "history", "point", "start", "end", "samples": [[t, value, quality], ...]}."""
    end = time.time() if now is None else now
    samples: list[list[Any]] = []
    async for s in client.read_history(
        [name], end - DAY_S, end, bucket=BUCKET_S, aggregation="avg", timeout=CALL_TIMEOUT_S
    ):
        # A bucket that averaged to NaN or ±Infinity is left out: the chart shows a gap.
        if isinstance(s.value, int | float) and not isinstance(s.value, bool) and isfinite(s.value):
            samples.append([s.time, s.value, s.quality])
    return {"type": "history", "point": name, "start": end - DAY_S, "end": end, "samples": samples}
