"""Run every core benchmark, one after the other (they must not share the 2 cores).

`python bench/run_all.py`          the real run, about 3-4 minutes on 2 cores
`python bench/run_all.py --quick`  a smoke run of every script, under a minute
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BENCHMARKS", "main"]

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("ingest.py", "watch_latency.py", "footprint.py", "site.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run of each benchmark")
    parser.add_argument("only", nargs="*", help=f"a subset of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only or b[:-3] in args.only]
    failed = []
    start = time.monotonic()
    for name in chosen:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"=== {name}{' --quick' if args.quick else ''} (load average {load})", flush=True)
        t0 = time.monotonic()
        cmd = [sys.executable, str(HERE / name), *(["--quick"] if args.quick else [])]
        rc = subprocess.run(cmd, cwd=HERE.parent).returncode
        print(f"=== {name}: exit {rc} in {time.monotonic() - t0:.1f} s\n", flush=True)
        if rc != 0:
            failed.append(name)
    total = time.monotonic() - start
    print(f"all benchmarks: {len(chosen) - len(failed)} ran, {len(failed)} failed, {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
