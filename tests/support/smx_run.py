"""`smx run` as its own process on a fresh site home, for the tests that drive a whole site:
the site file and the files next to it are written first, its output goes to
`<home>/smx-run.log`, `stop` and `start` restart it on the same home, and `close` stops it and
removes the home."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def quick_site(site: str, supervisor: str = "") -> str:
    """The head of a test site.toml: history flushed, crashed processes restarted and stopped
    quickly; `supervisor`: more lines of its [supervisor] table."""
    return f"""\
site = "{site}"

[core.history]
flush_interval = "200ms"

[supervisor]
backoff_initial = "200ms"
backoff_max = "1s"
stop_timeout = "3s"
health_timeout = "15s"
{supervisor}
"""


def run_smx(*args: str) -> subprocess.CompletedProcess[str]:
    """`smx ARGS` of this checkout, run as from a shell, its output kept."""
    return subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


class SmxRun:
    def __init__(
        self,
        site_toml: str | Callable[[Path], str],
        files: Mapping[str, str] | None = None,
        *,
        prefix: str = "smx-",
        env: Mapping[str, str] | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=prefix))  # short: socket paths are limited
        # e.g. `setpriv ...`: what `smx run` is started under
        self.command_prefix = list(command_prefix)
        self.config = self.home / "site.toml"
        for name, text in (files or {}).items():
            (self.home / name).write_text(text)
        self.config.write_text(site_toml(self.home) if callable(site_toml) else site_toml)
        self.out = open(self.home / "smx-run.log", "wb")  # noqa: SIM115 - closed in close()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.start()

    def start(self) -> None:
        """Start `smx run` on this home (again, after `stop`)."""
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "trusted.cli.main", "run"]
            + ["--config", str(self.config)],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def stop(self) -> int | None:
        """SIGTERM to the supervisor (SIGKILL after 20 s); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def status(self) -> dict[str, Any]:
        """run/supervisor.json, or no processes while there is none yet."""
        try:
            return json.loads((self.home / "run" / "supervisor.json").read_text())
        except (OSError, ValueError):
            return {"processes": []}

    def procs(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.status()["processes"]}

    def smx(self, *args: str) -> subprocess.CompletedProcess[str]:
        """An `smx` command run as from a shell (e.g. `status --home HOME`), its output kept."""
        return run_smx(*args)

    def log(self) -> str:
        return (self.home / "smx-run.log").read_text(errors="replace")

    def close(self) -> None:
        """Stop the supervisor (SIGTERM, SIGKILL after 20 s), then every process group it
        reported, and remove the home."""
        pids = [p["pid"] for p in self.procs().values() if p.get("pid")]
        self.stop()
        for pid in pids:
            self.kill_group(pid)
        self.out.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def kill_group(self, pid: int) -> None:
        """SIGKILL the process group `pid` if it is still one of this site's: a pid seen
        earlier may belong to another site's process by now (pids are reused)."""
        try:
            seen = Path(f"/proc/{pid}/environ").read_bytes()
            seen += Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return  # gone with its supervisor, as it should be
        if str(self.home).encode() not in seen:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
