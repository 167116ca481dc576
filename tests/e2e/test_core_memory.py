"""The core gives the memory a burst freed back to the system (smx/heap.py): glibc kept
~15 MiB a burst of large snapshots had used for the life of the core. Measured on the real core
process: RSS falls back within a few of its 5 s health-point rounds."""

from __future__ import annotations

import asyncio
import signal
import time

import psutil

from smx.v1 import point_service_pb2 as spb
from tests.support.bulk import write_strings
from tests.support.site import CoreProcess

POINTS, WATCHERS = 8_000, 12
TEXT = "x" * 2000


def _rss_mib(ps: psutil.Process) -> float:
    return ps.memory_info().rss / 2**20


async def test_memory_a_burst_of_snapshots_freed_goes_back_to_the_system(site):
    core = CoreProcess(site)
    ps = psutil.Process(core.proc.pid)
    try:
        await write_strings(site.stubs("meter").points, POINTS, TEXT)

        async def read_snapshot() -> None:
            stream = site.stubs("gui").points.WatchPoints(
                spb.WatchPointsRequest(patterns=["meter/*"])
            )
            seen = 0
            while seen < POINTS:
                seen += len((await asyncio.wait_for(stream.read(), 30)).points)
            stream.cancel()

        await asyncio.gather(*(read_snapshot() for _ in range(WATCHERS)))
        peak = _rss_mib(ps)
        deadline = time.monotonic() + 15  # three rounds of the core's health points
        while _rss_mib(ps) > peak - 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert _rss_mib(ps) <= peak - 5, (peak, _rss_mib(ps))
    finally:
        core.kill(signal.SIGTERM)
