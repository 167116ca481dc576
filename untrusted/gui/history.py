"""A point's last 24 h for the chart: ReadHistory averaged into 5-minute buckets by the core
(288 samples, whatever the point's rate), so a page never pulls a day of raw samples."""

from __future__ import annotations

import time
from math import isfinite
from typing import Any

from smx.quality import quality_name
from smx.sdk import Client
from smx.timestamps import seconds_to_duration, seconds_to_ts, ts_to_seconds
from smx.v1 import point_service_pb2 as pb
from smx.values import from_value

__all__ = ["DAY_S", "day_of"]

DAY_S = 24 * 3600.0
BUCKET_S = 300.0
CALL_TIMEOUT_S = 10.0


async def day_of(client: Client, name: str, *, now: float | None = None) -> dict[str, Any]:
    """{"type": "history", "point", "start", "end", "samples": [[t, value, quality], ...]}."""
    end = time.time() if now is None else now
    request = pb.ReadHistoryRequest(
        names=[name],
        start_time=seconds_to_ts(end - DAY_S),
        end_time=seconds_to_ts(end),
        bucket=seconds_to_duration(BUCKET_S),
        aggregation=pb.AGGREGATION_AVG,
    )
    samples: list[list[Any]] = []
    async for reply in client.stubs.points.ReadHistory(request, timeout=CALL_TIMEOUT_S):
        for s in reply.samples:
            value = from_value(s.value)
            # A bucket that averaged to NaN or ±Infinity is left out: the chart shows a gap.
            if isinstance(value, int | float) and not isinstance(value, bool) and isfinite(value):
                samples.append([ts_to_seconds(s.sample_time), value, quality_name(s.quality)])
    return {"type": "history", "point": name, "start": end - DAY_S, "end": end, "samples": samples}
