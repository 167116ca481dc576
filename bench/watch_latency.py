"""Watch latency: write -> subscriber latency at 1,000 points/s with 1 and 20 subscribers,
against a bare grpc.aio server-streaming relay measured in the same run on the same transport.

- writer: this process, grpc.aio, 10 points every 10 ms, each with source_time = now.
- subscribers: separate processes (spawned), each holding one or more streams, each stream on
  its own connection (as separate clients); latency = receive time - source_time, per point,
  on the same machine clock.
- core: WritePoints (meter) -> WatchPoints(["meter/w*"]) (gui).
- baseline: Publish(the same serialized WritePointsRequest) -> bare server -> Subscribe stream
  of those bytes, parsed by the subscriber; same processes, streams and credentials.

Run: `python bench/watch_latency.py [--quick] [--seconds 6] [--procs 4]`
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import harness
from harness import BareServer, BenchCore, Site, fmt_table, percentile, target_line

from smx.client import Credentials
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb

__all__ = ["main"]

POINTS_PER_WRITE = 10
WRITE_PERIOD = 0.010  # 10 points every 10 ms: 1,000 points/s
WARMUP = 0.5  # seconds of samples discarded at the start
TARGETS_P99_MS = {1: 10.0, 20: 25.0}


# -- subscriber process ---------------------------------------------------------------------------


def subscriber_main(
    kind: str,
    home: str,
    target: str,
    streams: int,
    ready: mp.Queue,
    stop: mp.Event,
    results: mp.Queue,
) -> None:
    """One subscriber process: `streams` streams; sends back (source_ms, latency_ms) pairs."""
    results.put(asyncio.run(_subscribe(kind, Path(home), target, streams, ready, stop)))


async def _subscribe(
    kind: str, home: Path, target: str, streams: int, ready: mp.Queue, stop: mp.Event
) -> list[tuple[float, float]]:
    creds = Credentials.from_site(home, "gui")
    samples: list[tuple[float, float]] = []
    channels = [harness.aio_channel(creds, target, own_connection=True) for _ in range(streams)]
    calls = []
    for ch in channels:
        if kind == "core":
            call = pb_stub(ch)(pb.WatchPointsRequest(patterns=["meter/w*"]))
        else:
            call = ch.unary_stream(harness.SUBSCRIBE)(b"")
        await call.read()  # the snapshot (core) or the "subscribed" marker (bare)
        calls.append(call)
    ready.put(streams)

    async def read(call: object) -> None:
        while True:
            msg = await call.read()  # type: ignore[attr-defined]
            now = time.time()
            if kind == "core":
                for p in msg.points:
                    src = p.source_time.seconds + p.source_time.nanos / 1e9
                    samples.append((src, (now - src) * 1000))
            else:
                for s in pb.WritePointsRequest.FromString(msg).samples:
                    src = s.source_time.seconds + s.source_time.nanos / 1e9
                    samples.append((src, (now - src) * 1000))

    tasks = [asyncio.create_task(read(c)) for c in calls]
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    for c in calls:
        c.cancel()  # type: ignore[attr-defined]
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return samples


def pb_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    from smx.v1 import point_service_pb2_grpc

    return point_service_pb2_grpc.PointServiceStub(channel).WatchPoints


# -- writer and coordination -----------------------------------------------------------------------


@dataclass
class Result:
    server: str
    subscribers: int
    p50: float
    p99: float
    max: float
    delivered: float  # points received / points written x subscribers, in the window
    writes: int
    late_writes: int  # writes started more than one period behind schedule


def _request(count: int) -> pb.WritePointsRequest:
    ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    return pb.WritePointsRequest(
        samples=[
            ppb.PointSample(
                name=f"meter/w{i}",
                value=ppb.Value(double_value=count),
                source_time={"seconds": seconds, "nanos": nanos},
            )
            for i in range(POINTS_PER_WRITE)
        ]
    )


async def _write_for(kind: str, site: Site, target: str, seconds: float) -> tuple[int, int, float]:
    """Write on schedule for `seconds`; returns (writes, late writes, time of the first)."""
    ch = harness.aio_channel(site.creds("meter"), target)
    method = "/smx.v1.PointService/WritePoints" if kind == "core" else harness.PUBLISH
    call = ch.unary_unary(method, request_serializer=pb.WritePointsRequest.SerializeToString)
    await call(_request(0))  # connect before the clock starts
    start = time.monotonic()
    first = time.time()
    writes = late = 0
    nxt = start
    while nxt - start < seconds:
        delay = nxt - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -WRITE_PERIOD:
            late += 1
        writes += 1
        await call(_request(writes))
        nxt += WRITE_PERIOD
    await asyncio.sleep(0.2)  # let the last changes reach the subscribers
    await ch.close()
    return writes, late, first


def run_case(kind: str, site: Site, target: str, subs: int, procs: int, seconds: float) -> Result:
    ctx = mp.get_context("spawn")  # never fork a process that has grpc state
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = max(1, min(procs, subs))
    split = [subs // procs + (1 if i < subs % procs else 0) for i in range(procs)]
    children = [
        ctx.Process(
            target=subscriber_main,
            args=(kind, str(site.home), target, n, ready, stop, results),
            daemon=True,
        )
        for n in split
    ]
    for c in children:
        c.start()
    got = 0
    while got < subs:
        got += ready.get(timeout=30)
    writes, late, first = asyncio.run(_write_for(kind, site, target, seconds))
    stop.set()
    samples: list[tuple[float, float]] = []
    for _ in children:
        try:
            samples += results.get(timeout=30)
        except queue.Empty:
            break
    for c in children:
        c.join(10)
    cutoff = first + WARMUP
    lat = [ms for src, ms in samples if src >= cutoff]
    expected = sum(1 for i in range(writes) if i * WRITE_PERIOD >= WARMUP) * POINTS_PER_WRITE
    return Result(
        kind,
        subs,
        percentile(lat, 50),
        percentile(lat, 99),
        max(lat, default=float("nan")),
        len(lat) / (expected * subs) if expected else float("nan"),
        writes,
        late,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write -> WatchPoints latency vs a bare relay")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--seconds", type=float, default=6.0, help="writing time per case")
    parser.add_argument(
        "--procs", type=int, default=4, help="subscriber processes for the 20-subscriber case"
    )
    args = parser.parse_args(argv)
    seconds = 1.5 if args.quick else args.seconds
    site = Site()
    core = bare = None
    results: list[Result] = []
    try:
        core = BenchCore(site)
        bare = BareServer(site)
        rss_idle = core.rss_mb()
        cpu0 = core.cpu_seconds()
        for subs in (1, 20):
            for kind, target in (("bare", bare.target), ("core", site.target)):
                results.append(run_case(kind, site, target, subs, args.procs, seconds))
        rss_after = core.rss_mb()
        core_cpu = core.cpu_seconds() - cpu0
    finally:
        if bare is not None:
            bare.stop()
        if core is not None:
            core.stop()
        site.cleanup()

    print("watch latency: write -> subscriber, 1,000 points/s (10 points every 10 ms)")
    print(
        f"  {seconds:g} s per case, first {WARMUP:g} s discarded; subscribers in "
        f"{args.procs} process(es) for 20, 1 for 1; baseline = bare grpc.aio relay"
    )
    rows = []
    by = {(r.server, r.subscribers): r for r in results}
    for r in results:
        base = by[("bare", r.subscribers)]
        ratio = f"{r.p99 / base.p99:.1f}x" if r.server == "core" else ""
        rows.append(
            [
                r.server,
                r.subscribers,
                r.p50,
                r.p99,
                r.max,
                ratio,
                f"{r.delivered:.1%}",
                f"{r.writes} ({r.late_writes} late)",
            ]
        )
    print(
        fmt_table(
            ["server", "subs", "p50 ms", "p99 ms", "max ms", "p99 vs bare", "delivered", "writes"],
            rows,
        )
    )
    print(f"core RSS: {rss_idle:.1f} MB idle, {rss_after:.1f} MB after; core CPU {core_cpu:.1f} s")
    for subs, limit in TARGETS_P99_MS.items():
        print(
            target_line(
                f"p99 with {subs} subscriber(s)", by[("core", subs)].p99, limit, "ms", False
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
