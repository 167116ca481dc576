"""The simulator as a site.toml `[simulators.NAME]` entry runs it: its config from SMX_CONFIG,
the pseudo-terminals behind symlinks in its working directory (the site directory), a clean
stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from extensions.energy_router import messages as m
from extensions.energy_router.frames import FrameDecoder, encode
from extensions.energy_router.messages import BATTERY, INVERTER

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[3]


def test_runs_from_its_config_and_links_the_ports(tmp_path: Path) -> None:
    config = tmp_path / "er-sim.json"
    config.write_text(
        json.dumps(
            {
                "inverter_link": "inv.pty",
                "battery_link": "bat.pty",
                "tick": 0.05,
                "startup_pause": 0.1,
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMX_NAME": "er-sim", "SMX_CONFIG": str(config)}
    sim = subprocess.Popen(
        [sys.executable, "-m", "extensions.energy_router.simulator"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        assert sim.stdout.readline().startswith("ready: inverter inv.pty -> /dev/pts/")
        for link, controller in (("bat.pty", BATTERY), ("inv.pty", INVERTER)):
            with serial.Serial(str(tmp_path / link), 9600, timeout=0.05) as port:
                port.write(encode(m.id_request(controller, 30.0)))
                decoder, frames = FrameDecoder(), []
                deadline = time.monotonic() + 2
                while len(frames) < 3 and time.monotonic() < deadline:
                    frames += decoder.feed(port.read(64))
                assert frames[0] == m.id_answer(controller)
                assert len(frames) >= 3  # then its measurements, after the pause
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(10) == 0
        assert not (tmp_path / "inv.pty").exists() and not (tmp_path / "bat.pty").is_symlink()
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
