"""IEC 62056-21 mode C readout through the simulator at real line timing: the time a full
readout takes vs. its floor (every byte's line time at 10 bits/byte plus the standard's three
200 ms reaction times: meter after the sign-on, reader before the ACK, meter after the ACK).

    .venv/bin/python bench/iec_readout.py               # Iskra MT174, 300 -> 9600 baud, 2 runs
    .venv/bin/python bench/iec_readout.py --runs 1 --fixture tests/.../EM214.txt

Target: readout time <= 1.2 x floor. Exits 0 and prints the figures and whether it was met.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extensions.smm.iec62056_21 import sign_on  # noqa: E402
from extensions.smm.iec_client import IecClient  # noqa: E402
from extensions.smm.iec_simulator import IecSimulator, SimMeter  # noqa: E402

FIXTURE = (
    Path(__file__).resolve().parent.parent / "tests/extensions/smm/fixtures/iskra_mt174/readout.txt"
)
TARGET = 1.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--initial-baud", type=int, default=300)
    args = parser.parse_args()
    reaction = 0.2
    with IecSimulator(
        SimMeter(args.fixture), initial_baud=args.initial_baud, reaction_time=reaction
    ) as sim:
        client = IecClient(sim.port, initial_baud=args.initial_baud, reaction_time=reaction)
        ratios = []
        print(f"fixture {args.fixture.name}, sign-on at {args.initial_baud} baud")
        print(f"{'run':>3} {'bytes':>6} {'baud':>5} {'floor s':>8} {'took s':>7} {'ratio':>6}")
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            readout = client.read()
            took = time.monotonic() - t0
            ident = readout.identification.line
            ack = 6
            slow = len(sign_on()) + len(ident) + ack  # at the initial rate
            floor = slow * 10 / args.initial_baud + len(readout.raw) * 10 / readout.baud
            floor += 3 * reaction
            ratios.append(took / floor)
            print(
                f"{run:>3} {slow + len(readout.raw):>6} {readout.baud:>5} {floor:>8.3f} "
                f"{took:>7.3f} {took / floor:>6.3f}"
            )
        client.close()
    worst = max(ratios)
    print(f"worst ratio {worst:.3f} (target <= {TARGET}): {'MET' if worst <= TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
