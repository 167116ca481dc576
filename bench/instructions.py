"""Instructions per one-point write, counted by valgrind's callgrind: the core against the bare
grpc.aio relay, each started under callgrind, counters zeroed after a warm-up and dumped after
N sequential writes. Instruction counts hardly move with the machine's load, where CPU time
moves by 20% and more on a shared VM: use this to tell whether a change to the write path is
worth timing at all (docs/PERFORMANCE.md, run 11). It needs valgrind (`apt-get install
valgrind`); the servers run ~50x slower under it.

Run: `python bench/instructions.py [--writes 300] [--uvloop-baseline]`
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import BareServer, BenchCore, Site
from watch_latency import _configure, _request

from smx.v1 import point_service_pb2 as pb

__all__ = ["main"]

WARMUP_WRITES = 50
STARTUP_TIMEOUT_S = 300.0  # a core under callgrind takes tens of seconds to start


def _callgrind(out_dir: Path) -> list[str]:
    """The wrapper that runs a server under callgrind, its counts in `out_dir`."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p"]


async def _write(site: Site, target: str, method: str, n: int) -> None:
    ch = harness.aio_channel(site.creds("meter"), target)
    call = ch.unary_unary(method, request_serializer=pb.WritePointsRequest.SerializeToString)
    for i in range(n):
        await call(_request(i))
    await ch.close()


def per_write(site: Site, target: str, method: str, pid: int, n: int, out_dir: Path) -> float:
    asyncio.run(_write(site, target, method, WARMUP_WRITES))
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    asyncio.run(_write(site, target, method, n))
    subprocess.run(
        ["callgrind_control", "--dump=measured", str(pid)], check=True, capture_output=True
    )
    time.sleep(1)
    total = 0
    for f in out_dir.glob(f"cg.{pid}*"):
        text = f.read_text(errors="replace")
        if "measured" in text[:2000]:
            m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            total += int(m.group(1)) if m else 0
    return total / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300, help="measured writes per server")
    parser.add_argument("--uvloop-baseline", action="store_true", help="the bare relay on uvloop")
    args = parser.parse_args(argv)
    _configure(one_point=True)  # the same one-point request as watch_latency.py --one-point
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 1
    out_dir = Path(tempfile.mkdtemp(prefix="smx-callgrind-"))
    wrapper = _callgrind(out_dir)
    site = Site()
    try:
        bare = BareServer(
            site, uvloop=args.uvloop_baseline, wrapper=wrapper, startup_s=STARTUP_TIMEOUT_S
        )
        try:
            base = per_write(
                site, bare.target, harness.PUBLISH, bare.proc.pid, args.writes, out_dir
            )
        finally:
            bare.stop()
        core = BenchCore(site, wrapper=wrapper, startup_s=STARTUP_TIMEOUT_S)
        try:
            method = "/smx.v1.PointService/WritePoints"
            mine = per_write(site, site.target, method, core.pid, args.writes, out_dir)
        finally:
            core.stop()
    finally:
        site.cleanup()
        shutil.rmtree(out_dir, ignore_errors=True)
    loop = "uvloop" if args.uvloop_baseline else "asyncio's loop"
    print(f"instructions per one-point write ({args.writes} writes, callgrind, whole process)")
    print(f"  bare relay on {loop}: {base:,.0f}")
    print(f"  core:                 {mine:,.0f}  ({mine / base:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
