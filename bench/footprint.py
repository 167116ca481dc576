"""Footprint: what logging 200 points at 1 Hz costs the core, in CPU (share of one core) and
memory, with the core in its production configuration (history flushed every 2 s).

There is no switch to turn the history log off, so the cost of history is bounded two ways:

1. whole core, upper bound: core CPU while a client writes 200 declared points once a second,
   minus the core's CPU when idle over a window of the same kind. The difference is everything
   the write costs the core (TLS, gRPC, auth, RBAC, realtime DB, audit, history).
2. history alone: the core's own `HistoryLog` in a separate process, fed the same 200 samples
   once a second (serializing each point's snapshot as the core does), minus that process idle.

The baseline of (1) is the same core, idle, in the same run; (2) isolates the part of (1) that
history is. CPU is user + system time of the whole process (all threads) from psutil.

Run: `python bench/footprint.py [--quick] [--seconds 30]`
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import BenchCore, Site, ThreadCPU, fmt_table, target_line

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb

__all__ = ["main"]

POINTS = 200
PERIOD = 1.0
TARGET_PCT = 5.0
NAMES = [f"meter/f{i:03d}" for i in range(POINTS)]


@dataclass
class Window:
    seconds: float
    cpu: float

    @property
    def pct(self) -> float:
        return 100 * self.cpu / self.seconds


async def _write_once_a_second(site: Site, seconds: float, measure: Callable[[], float]) -> Window:
    """Declare the points, then write all of them once per PERIOD for `seconds`; `measure()`
    returns the CPU seconds of the process under test."""
    ch = harness.aio_channel(site.creds("meter"), site.target)
    stub = ch.unary_unary(
        "/smx.v1.PointService/WritePoints",
        request_serializer=pb.WritePointsRequest.SerializeToString,
    )
    declare = ch.unary_unary(
        "/smx.v1.PointService/DeclarePoints",
        request_serializer=pb.DeclarePointsRequest.SerializeToString,
    )
    metas = [
        ppb.PointMetadata(
            name=n, unit="W", kind=ppb.VALUE_KIND_DOUBLE, expected_period={"seconds": 1}
        )
        for n in NAMES
    ]
    await declare(pb.DeclarePointsRequest(points=metas))
    await asyncio.sleep(PERIOD)
    cpu0, t0 = measure(), time.monotonic()
    tick = 0
    while (tick + 1) * PERIOD <= seconds:
        await stub(_batch(tick))
        tick += 1
        await asyncio.sleep(max(0.0, t0 + tick * PERIOD - time.monotonic()))
    window = Window(time.monotonic() - t0, measure() - cpu0)
    await ch.close()
    return window


def _batch(tick: int) -> pb.WritePointsRequest:
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return pb.WritePointsRequest(
        samples=[
            ppb.PointSample(
                name=n,
                value=ppb.Value(double_value=1000.0 + tick + i / 10),
                source_time={"seconds": seconds, "nanos": nanos},
            )
            for i, n in enumerate(NAMES)
        ]
    )


# -- history alone, in its own process -------------------------------------------------------------


def history_main(idle_s: float, load_s: float, results: mp.Queue) -> None:
    results.put(asyncio.run(_history_alone(idle_s, load_s)))


async def _history_alone(idle_s: float, load_s: float) -> tuple[Window, Window, int]:
    from smx.timestamps import ms_to_ts
    from trusted.core.config import load_core_config
    from trusted.core.history import HistoryLog

    with tempfile.TemporaryDirectory(prefix="smx-hist-") as tmp:
        cfg = load_core_config(None, home=Path(tmp)).history  # the production defaults
        cfg.path.parent.mkdir(parents=True, exist_ok=True)
        log = HistoryLog(
            cfg.path,
            flush_interval=cfg.flush_interval,
            max_age_s=cfg.max_age_s,
            max_bytes=cfg.max_bytes,
            retention_interval=cfg.retention_interval,
        )
        await log.start()
        await asyncio.sleep(PERIOD)
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(idle_s)
        idle = Window(time.monotonic() - t0, time.process_time() - cpu0)
        cpu0, t0 = time.process_time(), time.monotonic()
        tick = 0
        while (tick + 1) * PERIOD <= load_s:
            now = time.time_ns() // 1_000_000
            for i, name in enumerate(NAMES):
                value = 1000.0 + tick + i / 10
                point = ppb.Point(
                    name=name,
                    value=ppb.Value(double_value=value),
                    unit="W",
                    source_time=ms_to_ts(now),
                    receive_time=ms_to_ts(now),
                    quality=ppb.QUALITY_GOOD,
                    writer="spiffe://test-site/trusted/meter",
                    revision=tick + 1,
                )
                log.append(name, now, value, ppb.QUALITY_GOOD, point.SerializeToString())
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * PERIOD - time.monotonic()))
        load = Window(time.monotonic() - t0, time.process_time() - cpu0)
        await log.close()
        return idle, load, log.stats().get("flushed", 0)


def history_alone(idle_s: float, load_s: float) -> tuple[Window, Window, int]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=history_main, args=(idle_s, load_s, results), daemon=True)
    child.start()
    out = results.get(timeout=idle_s + load_s + 60)
    child.join(10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU and memory of logging 200 points at 1 Hz")
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--seconds", type=float, default=30.0, help="load window (default 30)")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="idle window")
    args = parser.parse_args(argv)
    load_s = 4.0 if args.quick else args.seconds
    idle_s = 3.0 if args.quick else args.idle_seconds

    site = Site()
    core = None
    try:
        core = BenchCore(site)
        time.sleep(2.0)  # start-up work done
        rss_idle = core.rss_mb()
        cpu0, t0 = core.cpu_seconds(), time.monotonic()
        time.sleep(idle_s)
        idle = Window(time.monotonic() - t0, core.cpu_seconds() - cpu0)
        threads = ThreadCPU(core.pid)
        before = threads.snapshot()
        load = asyncio.run(_write_once_a_second(site, load_s, core.cpu_seconds))
        by_thread = threads.delta(before, threads.snapshot())
        rss_after = core.rss_mb()
    finally:
        if core is not None:
            core.stop()
        site.cleanup()
    h_idle, h_load, flushed = history_alone(min(idle_s, 5.0), load_s)

    written = POINTS * int(load_s / PERIOD)
    core_delta = load.pct - idle.pct
    hist_delta = h_load.pct - h_idle.pct
    print(f"footprint: {POINTS} points written once per second, core in production config")
    print(
        fmt_table(
            ["what (CPU of one process)", "window s", "CPU s", "% of one core", "us/point"],
            [
                ["core idle (baseline)", idle.seconds, idle.cpu, idle.pct, ""],
                ["core, 200 points @ 1 Hz", load.seconds, load.cpu, load.pct, ""],
                [
                    "  difference: whole write path",
                    "",
                    "",
                    core_delta,
                    f"{1e6 * (load.cpu - idle.pct / 100 * load.seconds) / written:.0f}",
                ],
                ["history alone, idle", h_idle.seconds, h_idle.cpu, h_idle.pct, ""],
                ["history alone, 200 @ 1 Hz", h_load.seconds, h_load.cpu, h_load.pct, ""],
                [
                    "  difference: history log",
                    "",
                    "",
                    hist_delta,
                    f"{1e6 * (h_load.cpu - h_idle.pct / 100 * h_load.seconds) / written:.0f}",
                ],
            ],
        )
    )
    print(f"history alone flushed {flushed} of {written} samples")
    print(
        fmt_table(
            ["core thread during load", "CPU s"],
            [[label, cpu] for label, cpu in by_thread[:6]],
        )
    )
    print(f"core RSS: {rss_idle:.1f} MB idle, {rss_after:.1f} MB after the load")
    print(target_line("history cost (history alone)", hist_delta, TARGET_PCT, "% of a core", False))
    print(
        target_line(
            "whole write path incl. history (upper bound)",
            core_delta,
            TARGET_PCT,
            "% of a core",
            False,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
