"""`smx demo` (the README's main command) runs a whole site under the supervisor: values change,
a setpoint from the planner is applied by the battery extension, and Ctrl-C (SIGINT) stops every
process, leaving nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_live_values_and_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "trusted.cli.main", "demo", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 40
    children: set[int] = set()
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        if "APPLIED" in line or "CLAMPED" in line:
            break
    time.sleep(1.5)  # a few more seconds of live values
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    lines += out.splitlines()
    text = "\n".join(lines)
    assert proc.returncode == 0, text[-2000:]
    home = Path(re.search(r"running in (\S+?):", text).group(1))
    # Every part ran as its own process: core, battery extension, simulator, planner agent.
    assert re.search(
        r"core \(core\).*battery \(extension\).*planner \(agent\).*"
        r"battery-sim \(simulator\)",
        text,
    ), text[:500]
    socs = re.findall(r"battery/SoC\s+([\d.]+) %", text)
    assert len(socs) >= 3
    assert re.search(r"setpoint battery/P_set = 3000.00 W from planner: APPLIED", text), text
    assert "demo stopped; nothing left running" in text
    assert len(children) >= 4
    time.sleep(0.5)
    assert not [
        p
        for p in children
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not home.exists()
