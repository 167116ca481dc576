"""Modbus RTU bus capacity: how many SDM630-sized meters one RS-485 line sustains at a 1 s cycle,
and the reader's CPU per meter.

Set-up: a socat pty pair; the smm Modbus simulator (`extensions.smm.modbus_simulator`, its own
process) serves N Eastron SDM630 meters on one end; on the other, N `ModbusMeter` devices share
one pymodbus client and are polled by the SDK (`poll_forever`: bus lock, 3.5-character gap after
each poll and between requests). A pty has no baud rate, so the simulator EMULATES the line: each
answer is delayed by the wire time of request + answer + the 3.5-character end-of-frame silence
at the configured baud (8N1: 10 bits a character), plus `--turnaround` (a real meter's reaction
time, unknown here: 0 by default). What is measured is therefore the reader's scheduling and
pymodbus' overhead on top of an emulated line, not a real UART.

A bus "sustains" N meters when every meter kept its 1 s cycle over the window: mean start-to-start
period <= 1.03 s, no gap over 1.9 s (no cycle missed: a meter's turn may move within the cycle
as the bus lock queue reorders), and no poll failed. Baselines, in the same run: (1) the line's
theoretical capacity, 1 s divided by the emulated line time of one SDM630 poll plus its gaps;
(2) CPU of a bare pymodbus client issuing the same reads at the same rate (no SDK, no
decoding, no semantics).

Run: `python bench/modbus_bus.py [--quick] [--seconds 6] [--turnaround 0.0]`
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness import fmt_table, target_line  # noqa: E402

from extensions.sdk.devices import DeviceState, poll_forever  # noqa: E402
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool  # noqa: E402
from extensions.smm.config import ModbusMeterConfig  # noqa: E402
from extensions.smm.meter_maps import resolve_map  # noqa: E402
from extensions.smm.modbus_device import build_meters  # noqa: E402

__all__ = ["main"]

MAP = "eastron_sdm630"
MAX_UNITS = 40


class Line:
    """socat pty pair + simulator process serving MAX_UNITS meters at one emulated baud."""

    def __init__(self, baud: int, turnaround: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="smx-mb-"))
        self.sim_end, self.reader_end = self.dir / "sim", self.dir / "reader"
        self.socat = subprocess.Popen(
            [
                "socat",
                f"pty,raw,echo=0,link={self.sim_end}",
                f"pty,raw,echo=0,link={self.reader_end}",
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (self.sim_end.exists() and self.reader_end.exists()):
            if time.monotonic() > deadline:
                raise RuntimeError("socat gave no pty pair")
            time.sleep(0.02)
        self.sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extensions.smm.modbus_simulator",
                "--rtu",
                str(self.sim_end),
                "--baud",
                str(baud),
                "--emulate-line",
                "--turnaround",
                str(turnaround),
                "--meter",
                f"1-{MAX_UNITS}:{MAP}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.sim.stdout is not None
        if self.sim.stdout.readline().strip() != "ready":
            raise RuntimeError("simulator did not start")

    def close(self) -> None:
        for proc in (self.sim, self.socat):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def run_meters(line: Line, baud: int, n: int, seconds: float) -> dict[str, float]:
    """N meters polled by the SDK for `seconds`: share of expected polls, failures, CPU."""
    pool = LinkPool()
    entries = [
        ModbusMeterConfig(
            device=f"m{u}",
            map=MAP,
            unit=u,
            serial=str(line.reader_end),
            baudrate=baud,
            response_timeout=0.5,
        )
        for u in range(1, n + 1)
    ]
    meters = build_meters(entries, pool)
    states = [DeviceState() for _ in meters]
    count = [0]
    starts: list[list[float]] = [[] for _ in meters]
    for i, m in enumerate(meters):
        m.poll = _timed(m.poll, starts[i])  # type: ignore[method-assign]

    def publish(name: str, value: object, quality: str, when: object) -> None:
        count[0] += 1

    # Warm up (open the port, first answers), then measure a whole window.
    tasks = [
        asyncio.create_task(poll_forever(m, s, publish))
        for m, s in zip(meters, states, strict=True)
    ]
    await asyncio.sleep(1.5)
    polls0 = [s.polls for s in states]
    fails0 = sum(s.failures for s in states)
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
    polls = [s.polls - p for s, p in zip(states, polls0, strict=True)]
    window = [[t for t in st if t0 <= t <= t0 + elapsed] for st in starts]
    periods = [(w[-1] - w[0]) / (len(w) - 1) if len(w) > 1 else math.inf for w in window]
    gaps = [max((b - a for a, b in zip(w, w[1:], strict=False)), default=math.inf) for w in window]
    fails = sum(s.failures for s in states) - fails0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for m in meters:
        await m.close()
    expected = elapsed / 1.0
    return {
        "n": n,
        "min_share": min(polls) / expected,
        "mean_share": sum(polls) / len(polls) / expected,
        "worst_period": max(periods),
        "worst_gap": max(gaps),
        "failures": fails,
        "cpu_pct_per_meter": 100 * cpu / elapsed / n,
    }


def _timed(poll, starts: list[float]):
    async def timed():
        starts.append(time.monotonic())
        return await poll()

    return timed


async def run_bare(line: Line, baud: int, n: int, seconds: float) -> float:
    """Baseline: a bare pymodbus client reading the same 80 registers of N units once a second
    each, back to back. Returns CPU % of a core per meter."""
    from pymodbus.client import AsyncModbusSerialClient

    client = AsyncModbusSerialClient(str(line.reader_end), baudrate=baud, timeout=0.5, retries=0)
    await client.connect()
    gap = LinkConfig(serial="x", baudrate=baud).frame_gap
    cpu0, t0 = time.process_time(), time.monotonic()
    next_cycle = t0
    while time.monotonic() - t0 < seconds:
        for u in range(1, n + 1):
            await client.read_input_registers(0, count=80, device_id=u)
            await asyncio.sleep(gap)
        next_cycle += 1.0
        await asyncio.sleep(max(0.0, next_cycle - time.monotonic()))
    cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
    client.close()
    return 100 * cpu / elapsed / n


def theoretical(baud: int, turnaround: float) -> tuple[float, int]:
    """Seconds of line per SDM630 poll (what the simulator emulates + the reader's gaps) and
    the meters that fit in 1 s."""
    cfg = LinkConfig(serial="x", baudrate=baud)
    m = resolve_map(MAP)
    per_poll = 0.0
    for b in m.blocks:
        per_poll += (8 + 5 + 2 * b.count + 3.5) * cfg.char_time + turnaround + cfg.frame_gap
    return per_poll, math.floor(1.0 / per_poll)


async def bench_baud(baud: int, seconds: float, turnaround: float) -> list[list[object]]:
    per_poll, cap = theoretical(baud, turnaround)
    line = Line(baud, turnaround)
    rows: list[list[object]] = []
    try:
        best: dict[str, float] | None = None
        n = max(1, cap - 2)
        while 1 <= n <= min(MAX_UNITS, cap + 3):
            r = await run_meters(line, baud, n, seconds)
            ok = r["worst_period"] <= 1.03 and r["worst_gap"] <= 1.9 and r["failures"] == 0
            rows.append(
                [
                    f"{baud}",
                    n,
                    r["worst_period"],
                    r["worst_gap"],
                    int(r["failures"]),
                    r["cpu_pct_per_meter"],
                    "yes" if ok else "SLIPS",
                ]
            )
            if ok:
                best = r
                n += 1
            elif best is None:
                n -= 1  # the first try already slipped: search downwards
            else:
                break
        sustained = int(best["n"]) if best else 0
        bare = await run_bare(line, baud, max(1, sustained), seconds) if sustained else math.nan
    finally:
        line.close()
    summary = [
        baud,
        per_poll * 1000,
        cap,
        sustained,
        sustained / cap if cap else math.nan,
        best["cpu_pct_per_meter"] if best else math.nan,
        bare,
        (best["cpu_pct_per_meter"] / bare) if best and bare else math.nan,
    ]
    return [rows, summary]  # type: ignore[list-item]


async def amain(args: argparse.Namespace) -> int:
    bauds = [9600, 19200]
    all_rows, summaries = [], []
    for baud in bauds:
        rows, summary = await bench_baud(baud, args.seconds, args.turnaround)
        all_rows += rows
        summaries.append(summary)
    print(
        f"Modbus RTU bus, {MAP} (1 request of 80 registers per poll), emulated line, "
        f"turnaround {args.turnaround * 1000:g} ms, {args.seconds:g} s windows\n"
    )
    print(
        fmt_table(
            [
                "baud",
                "meters",
                "worst mean period s",
                "worst gap s",
                "failures",
                "CPU %/meter",
                "1 s cycle held",
            ],
            all_rows,
        )
    )
    print()
    print(
        fmt_table(
            [
                "baud",
                "line ms/poll",
                "theory meters",
                "sustained",
                "ratio sustained/theory",
                "CPU %/meter",
                "bare pymodbus CPU %/meter",
                "ratio CPU/bare",
            ],
            summaries,
        )
    )
    print()
    for s in summaries:
        print(target_line(f"meters at {s[0]} baud vs line theory", float(s[4]), 0.8, "x", True))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measurement window per N")
    parser.add_argument("--turnaround", type=float, default=0.0, help="meter reaction time, s")
    parser.add_argument("--quick", action="store_true", help="4 s windows")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 4.0
    if shutil.which("socat") is None:
        print("socat is needed (apt-get install socat)")
        raise SystemExit(0)
    raise SystemExit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
