"""CPU and memory of decoding one IEC 62056-21 telegram (parse, map to the vocabulary,
plausibility) for every recording in tests/extensions/smm/fixtures/, against a baseline measured
in the same run: splitting the same bytes into lines (the least any reader does).

    .venv/bin/python bench/iec_decode.py            # 300 rounds of every recording

A mode D meter pushes one telegram every 1-2 s, so the figure that matters on the target board is
the decode time per telegram as a share of that second. Prints the figures; exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
import tracemalloc
import zoneinfo
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extensions.smm.iec62056_21 import parse_data_message, parse_push_telegram  # noqa: E402
from extensions.smm.iec_simulator import SimMeter  # noqa: E402
from extensions.smm.obis import map_datasets  # noqa: E402
from extensions.smm.semantics import Meter  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "tests/extensions/smm/fixtures"


def _decoder(folder: Path):
    info = tomllib.loads((folder / "meter.toml").read_text())
    sim = SimMeter(folder / "readout.txt", replay=True)
    tz = zoneinfo.ZoneInfo(info.get("timezone", "UTC"))
    meter = Meter(folder.name)
    if info["mode"] == "D":
        raw = sim.recorded_telegram
        raw = raw[: raw.index(b"\n", raw.index(b"!")) + 1]

        def decode() -> int:
            _, sets = parse_push_telegram(raw)
            return len(meter.readings(map_datasets(sets, tz=tz).readings))
    else:
        raw = sim.recorded_message
        strict = info["framing"] == "bcc"

        def decode() -> int:
            sets = parse_data_message(raw, require_bcc=strict)
            return len(meter.readings(map_datasets(sets, tz=tz).readings))

    return raw, decode


def _time(fn, rounds: int) -> float:
    t0 = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - t0) / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    folders = sorted(d for d in FIXTURES.iterdir() if (d / "meter.toml").is_file())
    print(
        f"{'recording':<24} {'bytes':>6} {'points':>6} {'decode us':>10} {'split us':>9} "
        f"{'ratio':>6} {'peak KB':>8}"
    )
    worst = 0.0
    for folder in folders:
        raw, decode = _decoder(folder)
        points = decode()
        decode_s = _time(decode, args.rounds)
        split_s = _time(lambda raw=raw: raw.decode("latin-1").split("\r\n"), args.rounds)
        tracemalloc.start()
        decode()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        worst = max(worst, decode_s)
        print(
            f"{folder.name:<24} {len(raw):>6} {points:>6} {decode_s * 1e6:>10.0f} "
            f"{split_s * 1e6:>9.1f} {decode_s / split_s:>6.0f} {peak / 1024:>8.1f}"
        )
    print(f"worst decode: {worst * 1e3:.2f} ms per telegram = {worst * 100:.2f} % of a 1 s push")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
