"""History writes: bytes the core writes to storage per stored sample, against the sample's payload
(16 bytes: an 8-byte time and an 8-byte value), with the core in its production configuration.

`smx core` runs in a temporary site as its own process; a client declares N points (expected
period 1 s) and writes all of them once a second through the API. The core's `write_bytes` in
/proc/PID/io (what it sent to the block layer: history segment, SQLite database, WAL and
checkpoints, audit log) is sampled every 10 s. The baseline, measured in the same run before
the load, is the same core idle: its own health points and audit cost that much anyway.

Steady state excludes the first minute. Compaction runs every 10 minutes (sooner above 200,000
waiting samples), so a run shorter than that shows the segment's cost only: the figure that
counts is from a run of 30 minutes or more.

Run: `python bench/history_writes.py [--minutes 3] [--points 200 2000] [--flush-interval 2]`
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field

import harness
from harness import BenchCore, Site, fmt_table

from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb

__all__ = ["main"]

PAYLOAD = 16  # bytes of a sample: time (8) and value (8)
TARGET = 2 * PAYLOAD
IDLE_S = 30.0
STEP_S = 10.0


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/PID/io")


@dataclass
class Run:
    points: int
    idle_rate: float = 0.0  # bytes/s of the idle core
    marks: list[tuple[float, int, int]] = field(default_factory=list)  # (t, bytes, samples)
    stop_bytes: int = 0
    rss_mb: float = 0.0

    def window(self, t0: float) -> tuple[float, int, int]:
        start = next(m for m in self.marks if m[0] >= t0)
        end = self.marks[-1]
        return end[0] - start[0], end[1] - start[1], end[2] - start[2]


async def _load(site: Site, core: BenchCore, run: Run, seconds: float) -> None:
    names = [f"meter/f{i:04d}" for i in range(run.points)]
    ch = harness.aio_channel(site.creds("meter"), site.target)
    write = ch.unary_unary(
        "/smx.v1.PointService/WritePoints",
        request_serializer=pb.WritePointsRequest.SerializeToString,
    )
    declare = ch.unary_unary(
        "/smx.v1.PointService/DeclarePoints",
        request_serializer=pb.DeclarePointsRequest.SerializeToString,
    )
    await declare(
        pb.DeclarePointsRequest(
            points=[
                ppb.PointMetadata(
                    name=n, unit="W", kind=ppb.VALUE_KIND_DOUBLE, expected_period={"seconds": 1}
                )
                for n in names
            ]
        )
    )
    rng = random.Random(1)
    level = [rng.uniform(100, 5000) for _ in names]
    t0 = time.monotonic()
    b0 = write_bytes(core.pid)
    run.marks.append((0.0, 0, 0))
    tick = 0
    next_mark = STEP_S
    while (tick + 1) <= seconds:
        seconds_, nanos = divmod(time.time_ns(), 1_000_000_000)
        # A meter's values: a slowly wandering level with noise, 0.1 W resolution.
        for i in range(len(level)):
            level[i] += rng.gauss(0, 5)
        req = pb.WritePointsRequest(
            samples=[
                ppb.PointSample(
                    name=n,
                    value=ppb.Value(double_value=round(level[i] + rng.gauss(0, 2), 1)),
                    source_time={"seconds": seconds_, "nanos": nanos},
                )
                for i, n in enumerate(names)
            ]
        )
        await write(req)
        tick += 1
        now = time.monotonic() - t0
        if now >= next_mark:
            run.marks.append((now, write_bytes(core.pid) - b0, tick * run.points))
            next_mark += STEP_S
        await asyncio.sleep(max(0.0, t0 + tick - time.monotonic()))
    run.marks.append((time.monotonic() - t0, write_bytes(core.pid) - b0, tick * run.points))
    await ch.close()


def measure(points: int, minutes: float, core_toml: str) -> Run:
    run = Run(points)
    site = Site()
    core = None
    try:
        core = BenchCore(site, core_toml)
        time.sleep(2.0)
        b0, t0 = write_bytes(core.pid), time.monotonic()
        time.sleep(IDLE_S)
        run.idle_rate = (write_bytes(core.pid) - b0) / (time.monotonic() - t0)
        asyncio.run(_load(site, core, run, minutes * 60))
        run.rss_mb = core.rss_mb()
        before = write_bytes(core.pid)
        pid = core.pid
        # The clean stop compacts the segment: read the counter just before the process ends.
        core.proc.send_signal(15)
        last = before
        while core.proc.poll() is None:
            try:
                last = write_bytes(pid)
            except OSError:
                break
            time.sleep(0.01)
        run.stop_bytes = last - before
    finally:
        if core is not None:
            core.stop()
        site.cleanup()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bytes written per stored history sample")
    parser.add_argument("--minutes", type=float, default=3.0, help="load per case (default 3)")
    parser.add_argument("--points", type=int, nargs="+", default=[200, 2000])
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="[history] flush_interval (default: the core's)",
    )
    args = parser.parse_args(argv)
    core_toml = (
        ""
        if args.flush_interval is None
        else f"[history]\nflush_interval = {args.flush_interval}\n"
    )
    rows = []
    for points in args.points:
        run = measure(points, args.minutes, core_toml)
        for label, t0 in (("total", 0.0), ("steady (after 1st min)", 60.0)):
            if run.marks[-1][0] <= t0:
                continue
            secs, nbytes, samples = run.window(t0)
            net = nbytes - run.idle_rate * secs
            per = net / samples
            rows.append(
                [
                    points,
                    label,
                    round(secs),
                    samples,
                    f"{nbytes / 1e6:.2f}",
                    f"{run.idle_rate * secs / 1e6:.2f}",
                    f"{per:.1f}",
                    f"{per / PAYLOAD:.2f}x",
                    f"{net / secs * 86400 / 1e9:.2f}",
                ]
            )
        print(
            f"{points} points: core RSS {run.rss_mb:.1f} MB after the load; clean stop wrote "
            f"{run.stop_bytes / 1e3:.0f} KB (the final compaction)"
        )
        step = [
            (round(t), f"{(b1 - b0) / (s1 - s0):.1f}")
            for (t, b0, s0), (_, b1, s1) in zip(run.marks, run.marks[1:], strict=False)
            if s1 > s0
        ]
        print("  B/sample per 10 s window:", " ".join(f"{t}s:{v}" for t, v in step))
    print(
        fmt_table(
            [
                "points",
                "window",
                "s",
                "samples",
                "written MB",
                "idle baseline MB",
                "B/sample (minus idle)",
                "vs 16 B payload",
                "GB/day",
            ],
            rows,
        )
    )
    print(f"target: <= {TARGET} B/sample ({TARGET // PAYLOAD}x the payload) in steady state")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
