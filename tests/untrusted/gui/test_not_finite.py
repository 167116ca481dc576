"""Values that are not finite (NaN, ±Infinity) reach a page as JSON the browser accepts: null
in any message, a gap in the chart; read as strictly as JSON.parse reads them. (The core
refuses NaN writes, so no real core can be made to send one: the history reply is a fake.)"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from smx.sdk import HistorySample
from smx.timestamps import seconds_to_ts
from smx.v1 import point_pb2
from smx.v1 import point_service_pb2 as spb
from smx.values import to_value
from untrusted.gui.history import day_of
from untrusted.gui.wire import dumps


def strict(raw: str | bytes) -> Any:
    """json.loads as JSON.parse: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(raw, parse_constant=refuse)


def test_a_value_that_is_not_finite_goes_as_null():
    message = {"points": [{"value": math.nan}, {"value": -math.inf}], "x": (math.inf, 1.5)}
    assert strict(dumps(message)) == {
        "points": [{"value": None}, {"value": None}],
        "x": [None, 1.5],
    }


class OneReply:
    """A client whose core answers ReadHistory with one reply (the core refuses NaN writes, but
    a bucket whose stored values are all NaN averages to NaN)."""

    def __init__(self, reply: spb.ReadHistoryResponse) -> None:
        self.reply = reply

    async def read_history(self, names: list[str], *args: Any, **kwargs: Any) -> Any:
        assert names == [self.reply.name]
        for sample in self.reply.samples:
            yield HistorySample.of(self.reply.name, sample)


async def test_a_bucket_that_is_not_finite_is_a_gap_in_the_chart():
    now = time.time()
    reply = spb.ReadHistoryResponse(
        name="pv/P",
        samples=[
            spb.HistorySample(
                sample_time=seconds_to_ts(now - 600 * (3 - i)),
                value=to_value(v),
                quality=point_pb2.QUALITY_GOOD,
            )
            for i, v in enumerate([-1000.0, math.nan, math.inf, -2000.0])
        ],
    )
    day = await day_of(OneReply(reply), "pv/P", now=now)  # type: ignore[arg-type]
    assert [v for _, v, _ in strict(dumps(day))["samples"]] == [-1000.0, -2000.0]
