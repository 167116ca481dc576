"""Ingest: WritePoints with batches of 1, 10 and 100 points over mTLS on the Unix socket, against
a bare grpc.aio echo server (same credentials, same transport, same payload bytes) measured in
the same run, plus the core's memory.

Both servers run as their own processes; the client is this process (grpc.aio). Each cell is
measured twice, interleaved echo/core, and the better run is kept (noise only slows a run down).

- sequential: one call at a time (await the reply, then send the next).
- concurrent: N calls in flight from the same aio client (N workers on one channel).

The client sends pre-serialized WritePointsRequest bytes to both servers (fresh source_time and
value on every call), so the client's own cost is the same for both; the echo returns the
request bytes, the core its WritePointsResponse.

Run: `python bench/ingest.py [--quick] [--concurrency 8] [--profile core.prof]`
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import harness
import psutil
from harness import BareServer, BenchCore, Site, ThreadCPU, fmt_table, percentile, target_line

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb

__all__ = ["main"]

WRITE_POINTS = "/smx.v1.PointService/WritePoints"
BATCHES = (1, 10, 100)
TARGET_BATCH1_RATIO = 0.70
TARGET_BATCH100_POINTS = 50_000
TARGET_RSS_MB = 80.0
SUSTAINED_RATE = 50_000  # points/s, in batches of 100


class Payload:
    """A WritePointsRequest of `n` samples of meter/pNNN, serialized with a fresh source_time
    and value each call (so the history log sees distinct samples, as from a real meter)."""

    def __init__(self, n: int) -> None:
        self.req = pb.WritePointsRequest(
            samples=[
                ppb.PointSample(name=f"meter/p{i:03d}", value=ppb.Value(double_value=0.0))
                for i in range(n)
            ]
        )
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        ns = time.time_ns()
        seconds, nanos = divmod(ns, 1_000_000_000)
        for s in self.req.samples:
            s.value.double_value = self.count
            s.source_time.seconds = seconds
            s.source_time.nanos = nanos
        return self.req.SerializeToString()


@dataclass
class Cell:
    server: str
    mode: str
    batch: int
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # CPU seconds of the server process during the run
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds by kind of thread

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def server_cpu_pct(self) -> float:
        return 100 * self.server_cpu / self.seconds if self.seconds else 0.0

    def us_per_call(self, group: str) -> float:
        return 1e6 * self.threads.get(group, 0.0) / self.calls if self.calls else 0.0


Call = Callable[[bytes], Awaitable[bytes]]


@dataclass
class Server:
    """What a cell measures on the server process: total CPU and CPU per kind of thread."""

    ps: psutil.Process
    threads: ThreadCPU

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system


async def sustained(call: Call, rate: float, seconds: float, concurrency: int) -> tuple[int, float]:
    """Batch-100 writes paced at `rate` calls/s from `concurrency` workers; returns (calls, s)."""
    payload = Payload(100)
    start = time.perf_counter()
    slots = iter(range(1 << 62))

    async def worker() -> int:
        n = 0
        while True:
            due = start + next(slots) / rate
            if due - start >= seconds:
                return n
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await call(payload.next())
            n += 1

    calls = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    return calls, time.perf_counter() - start


async def run_cell(
    cell: Cell, call: Call, seconds: float, concurrency: int, server: Server
) -> Cell:
    payload = Payload(cell.batch)
    warm = time.perf_counter() + min(0.3, seconds / 3)
    while time.perf_counter() < warm:
        await call(payload.next())
    latencies: list[float] = []
    deadline = 0.0

    async def worker() -> int:
        n = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return n
            await call(payload.next())
            latencies.append(time.perf_counter() - t0)
            n += 1

    cpu0, threads0 = server.cpu(), server.threads.snapshot()
    start = time.perf_counter()
    deadline = start + seconds
    counts = await asyncio.gather(*(worker() for _ in range(concurrency)))
    cell.seconds = time.perf_counter() - start
    cell.server_cpu = server.cpu() - cpu0
    cell.threads = server.threads.groups(threads0, server.threads.snapshot())
    cell.calls = sum(counts)
    cell.latencies = latencies
    return cell


class RssSampler(threading.Thread):
    """Peak RSS of a process, sampled every 100 ms from a thread of the client."""

    def __init__(self, read: Callable[[], float]) -> None:
        super().__init__(daemon=True)
        self.read, self.peak, self.done = read, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, self.read())


async def bench(args: argparse.Namespace) -> int:
    seconds = 0.5 if args.quick else args.seconds
    repeats = 1 if args.quick else args.repeats
    sus_seconds = 2.0 if args.quick else args.sustained
    site = Site()
    core = bare = None
    try:
        toml = (
            f'[history]\nflush_interval = "{args.flush_interval}"\n' if args.flush_interval else ""
        )
        core = BenchCore(site, core_toml=toml, profile=args.profile)
        bare = BareServer(site)
        time.sleep(1.0)  # let the core finish its start-up work before measuring idle memory
        rss_idle = core.rss_mb()
        creds = site.creds("meter")
        core_ch = harness.aio_channel(creds, site.target)
        echo_ch = harness.aio_channel(creds, bare.target)
        core_call = core_ch.unary_unary(WRITE_POINTS)
        echo_call = echo_ch.unary_unary(harness.ECHO)
        await core_call(Payload(1).next())  # connect (mTLS handshake) outside the timed runs
        await echo_call(b"x")

        echo_srv = Server(bare.ps, ThreadCPU(bare.proc.pid))
        core_srv = Server(core.ps, ThreadCPU(core.pid))

        # Sustained ingest at the target rate first, on a fresh core: does memory stay bounded
        # while the history log keeps up?
        cpu0 = core_srv.cpu()
        sus_calls, sus_s = await sustained(
            core_call, SUSTAINED_RATE / 100, sus_seconds, args.concurrency
        )
        sus_cpu = 100 * (core_srv.cpu() - cpu0) / sus_s
        rss_sustained = core.rss_mb()
        await asyncio.sleep(2.5)  # one history flush (2 s) after it
        rss_sustained_after = core.rss_mb()

        sampler = RssSampler(core.rss_mb)
        sampler.start()
        best: dict[tuple[str, str, int], Cell] = {}
        modes = [("sequential", 1), (f"concurrent x{args.concurrency}", args.concurrency)]
        for mode, conc in modes:
            for batch in BATCHES:
                for _ in range(repeats):
                    for server, call, srv in (
                        ("echo", echo_call, echo_srv),
                        ("core", core_call, core_srv),
                    ):
                        cell = await run_cell(Cell(server, mode, batch), call, seconds, conc, srv)
                        key = (server, mode, batch)
                        if key not in best or cell.rate > best[key].rate:
                            best[key] = cell
        sampler.done.set()
        sampler.join()
        rss_peak = sampler.peak
        await asyncio.sleep(2.5)  # one history flush (2 s) after the load
        rss_after = core.rss_mb()
        await core_ch.close()
        await echo_ch.close()

        rows = []
        for mode, _ in modes:
            for batch in BATCHES:
                e, c = best[("echo", mode, batch)], best[("core", mode, batch)]
                rows.append(
                    [
                        mode,
                        batch,
                        e.rate,
                        c.rate,
                        f"{c.rate / e.rate:.0%}",
                        c.rate * batch,
                        percentile(e.latencies, 50) * 1000,
                        percentile(c.latencies, 50) * 1000,
                        percentile(c.latencies, 99) * 1000,
                        f"{e.server_cpu_pct:.0f}/{c.server_cpu_pct:.0f}",
                    ]
                )
        print("ingest: WritePoints vs bare grpc.aio echo (mTLS, Unix socket, same payload)")
        print(f"  {seconds:g} s per cell, best of {repeats}; client = this process (grpc.aio)")
        print(
            fmt_table(
                [
                    "mode",
                    "batch",
                    "echo calls/s",
                    "core calls/s",
                    "core/echo",
                    "core points/s",
                    "echo p50 ms",
                    "core p50 ms",
                    "core p99 ms",
                    "srv CPU% e/c",
                ],
                rows,
            )
        )
        print()
        print(
            f"sustained: batch-100 paced at {SUSTAINED_RATE:,} points/s for {sus_seconds:g} s, "
            f"x{args.concurrency} in flight: {100 * sus_calls / sus_s:,.0f} points/s achieved, "
            f"core CPU {sus_cpu:.0f}%"
        )
        print()
        print(
            fmt_table(
                ["core memory (RSS)", "MB"],
                [
                    ["idle, after start", rss_idle],
                    ["after sustained 50k points/s", rss_sustained],
                    ["  + one history flush", rss_sustained_after],
                    ["peak during the full matrix", rss_peak],
                    ["after the matrix + one flush", rss_after],
                    ["(bare echo server, for scale)", bare.rss_mb()],
                ],
            )
        )
        print()
        print("server CPU per call, microseconds, by thread (best run of each cell):")
        print("  main = asyncio loop (all Python handling); grpc = C-core event engine threads;")
        print("  other = the rest (the core's history writer)")
        rows = []
        for mode, _ in modes:
            for batch in BATCHES:
                e, c = best[("echo", mode, batch)], best[("core", mode, batch)]
                rows.append(
                    [
                        mode,
                        batch,
                        e.us_per_call("main"),
                        e.us_per_call("grpc"),
                        c.us_per_call("main"),
                        c.us_per_call("grpc"),
                        c.us_per_call("other"),
                        c.us_per_call("main") - e.us_per_call("main"),
                    ]
                )
        print(
            fmt_table(
                [
                    "mode",
                    "batch",
                    "echo main",
                    "echo grpc",
                    "core main",
                    "core grpc",
                    "core other",
                    "main: core-echo",
                ],
                rows,
            )
        )
        print()
        for mode, _ in modes:
            e1, c1 = best[("echo", mode, 1)], best[("core", mode, 1)]
            ratio = 100 * c1.rate / e1.rate
            limit = TARGET_BATCH1_RATIO * 100
            print(target_line(f"batch-1 core/echo, {mode}", ratio, limit, "%", True))
        for mode, _ in modes:
            pts = best[("core", mode, 100)].rate * 100
            limit = TARGET_BATCH100_POINTS
            print(target_line(f"batch-100 ingest, {mode}", pts, limit, "points/s", True))
        print(
            target_line(
                "core RSS after sustained 50k points/s",
                rss_sustained_after,
                TARGET_RSS_MB,
                "MB",
                False,
            )
        )
        print(target_line("core RSS after the full matrix", rss_after, TARGET_RSS_MB, "MB", False))
    finally:
        if bare is not None:
            bare.stop()
        if core is not None:
            rc = core.stop()
            if rc != 0:
                print(f"warning: core exited with {rc}; see {site.home / 'core.log'}")
        if args.profile is None:
            site.cleanup()
        else:
            print(f"(site kept for the core log: {site.home})")
    if args.profile is not None:
        print_profile(args.profile)
    return 0


def print_profile(path: Path, top: int = 25) -> None:
    print(f"\ncProfile of the core's main (asyncio) thread, top {top} by own time: {path}")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="WritePoints ingest vs a bare grpc echo server")
    parser.add_argument("--quick", action="store_true", help="short smoke run (~10 s)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell, best kept")
    parser.add_argument(
        "--sustained", type=float, default=10.0, help="seconds of paced 50k points/s"
    )
    parser.add_argument(
        "--flush-interval", help='history flush interval, e.g. "200ms" (default: production 2s)'
    )
    parser.add_argument("--concurrency", type=int, default=8, help="in-flight calls (default 8)")
    parser.add_argument(
        "--profile", type=Path, help="run the core under cProfile, write the profile here"
    )
    args = parser.parse_args(argv)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
