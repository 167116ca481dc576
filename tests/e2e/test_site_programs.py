"""`smx run` with a site file whose extension cannot start (a misspelt module, a command that is
not there) refuses it at once: exit 2, one line naming the key, nothing provisioned or started,
instead of a process restarted for ever (trusted/supervisor/site_config.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from extensions.sdk.testing import smx_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            '[extensions.meter]\nmodule = "extensions.smmm"\n',
            "extensions.meter.module: no module named 'extensions.smmm' "
            "(did you mean 'extensions.smm'?)",
        ),
        (
            '[simulators.meter-sim]\ncommand = ["bin/meter-sim", "--tcp", "5020"]\n',
            "simulators.meter-sim.command[0]: {home}/bin/meter-sim: no such file",
        ),
    ],
)
def test_smx_run_refuses_a_process_that_cannot_start_at_once(tmp_path, table, problem):
    site = tmp_path / "site.toml"
    site.write_text(f'site = "usm-0017"\n[extensions.ok]\nmodule = "extensions.smm"\n{table}')
    started = time.monotonic()
    r = subprocess.run(
        [*smx_command(), "run", "--config", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"smx run: {site}: {problem.format(home=tmp_path)}\n"
    assert r.stdout == ""
    assert time.monotonic() - started < 30  # no start, no back-off: the file is refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.toml"]  # nothing provisioned
