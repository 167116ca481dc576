"""Diagnostic, not a benchmark: why the core's RSS grows under ingest.

Runs the core in a child process (the real `trusted.core.server.Core`, started like `smx core` does,
plus a 0.5 s sampler of its RSS, CPython's allocated blocks and the history log's backlog),
drives batch-100 WritePoints at a paced rate from this process, and prints the time series.

Run: `python bench/memory_probe.py [--rate 50000] [--seconds 12]`
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness
from harness import Site

__all__ = ["main"]


async def _child(home: Path) -> None:
    import psutil

    from trusted.core.config import load_core_config
    from trusted.core.server import Core

    core = Core(load_core_config(None, home=home))
    await core.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    proc, t0 = psutil.Process(), time.monotonic()
    while not stop.is_set():
        st = core.state.history.stats()
        print(
            f"{time.monotonic() - t0:6.1f}  {proc.memory_info().rss / 2**20:6.1f}"
            f"  {sys.getallocatedblocks():9d}  {st.get('pending', 0):8d}"
            f"  {st.get('flushed', 0):9d}  {st.get('flushes', 0):4d}",
            flush=True,
        )
        await asyncio.sleep(0.5)
    await core.stop()


async def _drive(site: Site, rate: float, seconds: float) -> None:
    from ingest import WRITE_POINTS, Payload, sustained

    ch = harness.aio_channel(site.creds("meter"), site.target)
    call = ch.unary_unary(WRITE_POINTS)
    await call(Payload(1).next())
    await asyncio.sleep(1.0)
    calls, took = await sustained(call, rate / 100, seconds, 8)
    print(f"# drove {100 * calls / took:,.0f} points/s for {took:.1f} s", flush=True)
    await ch.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the core's RSS and history backlog over time")
    parser.add_argument("--rate", type=float, default=50_000, help="points/s (batches of 100)")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(_child(args.child))
        return 0
    site = Site()
    try:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(site.home)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("core probe did not start")
        print("     s  RSS MB  py blocks  hist pending  flushed  flushes")
        out = child.stdout
        pump = threading.Thread(target=lambda: [print(x, end="", flush=True) for x in out])
        pump.daemon = True
        pump.start()
        asyncio.run(_drive(site, args.rate, args.seconds))
        time.sleep(5.0)  # the backlog drains; does RSS come down?
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    finally:
        site.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
