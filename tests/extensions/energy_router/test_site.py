"""The Energy Router on a whole site as `smx run` starts it from site.toml: the simulator as a
`[simulators]` entry making its ptys reachable at fixed paths, the extension as an
`[extensions]` entry reading them (as root: each with a user of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.smx_run import ROOT, SmxRun, quick_site

pytestmark = pytest.mark.timeout(120)


def _points(home: Path, *names: str) -> dict[str, dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(home), "points", "get", *names]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    return {p["name"]: p for p in map(json.loads, filter(str.strip, r.stdout.splitlines()))}


def test_smx_run_with_the_simulator_and_the_extension() -> None:
    # A directory both processes' users reach (the site home is not writable by them).
    links = Path(tempfile.mkdtemp(prefix="er-links-"))
    links.chmod(0o1777)
    site = SmxRun(
        quick_site("er-site")
        + f"""
[simulators.er-sim]
module = "extensions.energy_router.simulator"
[simulators.er-sim.config]
inverter_link = "{links}/inverter.pty"
battery_link = "{links}/battery.pty"
tick = 0.1
startup_pause = 0.5

[extensions.er]
module = "extensions.energy_router"
[extensions.er.config]
inverter_port = "{links}/inverter.pty"
battery_port = "{links}/battery.pty"
startup_pause = "500ms"
""",
        prefix="smx-er-",
    )
    try:
        deadline = time.monotonic() + 60
        got: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            assert site.proc.poll() is None, site.log()
            got = _points(site.home, "er/SoC", "er/P_PV", "er/U")
            if len(got) == 3 and all(p.get("quality") == "QUALITY_GOOD" for p in got.values()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"{got}\n{site.log()[-4000:]}")
        assert got["er/SoC"]["value"]["double_value"] == pytest.approx(50.0, abs=1)
        assert got["er/P_PV"]["value"]["double_value"] == -2000.0
        assert got["er/U"]["unit"] == "V"
    finally:
        site.close()
        for link in links.iterdir():
            link.unlink()
        links.rmdir()
