"""A client that opens watches and never reads them pins little of the core's memory. The
snapshot used to be one message built whole: 10,000 points of 2 KiB strings and 32 stalled
watches made the core hold 1.3 GB (attack review). Messages are now at most 256 KiB, each
built when the previous one is sent, so a stalled stream pins about one message."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap

import psutil

from tests.support.bulk import write_strings
from tests.support.site import ROOT

POINTS, STREAMS = 2_000, 16
TEXT = "x" * 2000

# The attacker: its own process and connections, one per stream, never reading.
STALLED_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from smx.client import Credentials, Stubs, unix_target
    from smx.v1 import point_service_pb2 as pb

    home, streams = sys.argv[1], int(sys.argv[2])

    async def main():
        calls = []
        for _ in range(streams):
            channel = Credentials.from_site(home, "gui").aio_channel(
                unix_target(home + "/core.sock"), options=[("grpc.use_local_subchannel_pool", 1)]
            )
            calls.append(Stubs(channel).points.WatchPoints(pb.WatchPointsRequest(patterns=["**"])))
            await calls[-1].initial_metadata()
        print("open", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


async def test_stalled_snapshots_pin_about_one_message_each(site, core):
    await write_strings(site.stubs("meter").points, POINTS, TEXT)
    await asyncio.sleep(0.5)
    before = _rss_mib()
    attacker = subprocess.Popen(
        [sys.executable, "-c", STALLED_CLIENT, str(site.home), str(STREAMS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(attacker.stdout.readline), 30)
        assert line.strip() == "open"
        await asyncio.sleep(3)  # the core builds and queues whatever it will for them
        grown = _rss_mib() - before
        assert core.state.db.watcher_count == STREAMS
    finally:
        attacker.kill()
        attacker.wait()
    # 16 snapshots of ~4.2 MB each: whole, they were > 130 MiB of the core's memory.
    assert grown < 40, f"the core grew by {grown:.0f} MiB for {STREAMS} stalled watches"
