"""`smx demo` (the README's main command) starts, shows changing values, shows a setpoint being
applied and a refusal, and stops cleanly leaving nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_live_values_and_stops_cleanly():
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "demo", "--seconds", "6", "--plain"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    socket = re.search(r"serving site demo-site on (\S+)", out).group(1)
    powers = re.findall(r"smm/P\s+(-?[\d.]+) W", out)
    assert len(set(powers)) >= 3, out  # values change from one second to the next
    assert "lessag tried to write smm/P: refused (PERMISSION_DENIED)" in out
    assert re.search(r"setpoint ess/P_set = 3000.00 W from lessag: APPLIED", out), out
    assert "demo stopped; nothing left running" in out
    assert not Path(socket).exists() and not Path(socket).parent.exists()
