"""`smx points write` of a value of another kind than the point's: one line, exit 2, nothing
stored; against the real core (docs/DATA-MODEL.md, "A point's kind")."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from smx.v1 import point_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


async def smx(site, *args: str) -> tuple[int, str, str]:
    # A child process, awaited: the core serves from this test's event loop meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trusted.cli.main",
        "--home",
        str(site.home),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_value_of_another_kind_is_one_line_and_exit_2(site, core):
    code, out, err = await smx(site, "points", "write", "--as", "meter", "meter/P=abc")
    assert code == 0, err
    code, out, err = await smx(
        site, "points", "write", "--as", "meter", "meter/U1=230", "meter/P=12.5"
    )
    assert code == 2 and out == ""
    assert err == (
        "smx points: INVALID_ARGUMENT [VALUE_KIND_MISMATCH]: point meter/P holds string "
        "values (the kind of its first value; declaring the point sets another); got a double "
        "value\n"
    )
    got = await site.stubs("meter").points.ListPoints(pb.ListPointsRequest(pattern="meter/*"))
    assert [m.name for m in got.points] == ["meter/P"]  # the batch stored nothing
    # Declared double: `1500` (a double on the command line) is taken, text is not.
    code, out, err = await smx(
        site, "points", "declare", "--as", "meter", "meter/E", "--unit", "kWh", "--kind", "double"
    )
    assert code == 0, err
    code, out, err = await smx(site, "points", "write", "--as", "meter", "meter/E=1500")
    assert code == 0, err
    code, out, err = await smx(site, "points", "write", "--as", "meter", "meter/E=high")
    assert code == 2 and len(err.splitlines()) == 1
    assert "[VALUE_KIND_MISMATCH]: point meter/E holds double values (declared)" in err
