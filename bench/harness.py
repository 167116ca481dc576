"""What every benchmark shares: the core and the bare baseline server as separate processes,
their CPU and memory, percentiles, and a compact table.

The core runs exactly as in production (`python -m trusted.cli.main --home HOME core`, its own
OS process, so client and server never share a GIL); the baseline is a bare grpc.aio server
(`bare_server.py`) with the same mTLS credentials on a Unix socket of the same site.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The scripts run as `python bench/x.py`: make the repository (and its `tests` package) importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psutil  # noqa: E402

from smx.client import CHANNEL_OPTIONS, Credentials, unix_target  # noqa: E402
from tests.support.site import CoreProcess, Site  # noqa: E402

__all__ = [
    "ROOT",
    "BareServer",
    "BenchCore",
    "Site",
    "ThreadCPU",
    "aio_channel",
    "fmt_table",
    "percentile",
    "rss_mb",
    "smaps_rollup",
    "target_line",
]

log = logging.getLogger(__name__)

BARE_SERVER = Path(__file__).resolve().parent / "bare_server.py"
ECHO = "/bench.Bare/Echo"
PUBLISH = "/bench.Bare/Publish"
SUBSCRIBE = "/bench.Bare/Subscribe"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def priority(nice: int) -> list[str]:
    """A command prefix running a program at CPU priority `nice` (nothing for 0)."""
    return ["nice", "-n", str(nice)] if nice else []


def group_priority(pid: int, nice: int) -> None:
    """Give the session of `pid` (started with `start_new_session`) the autogroup nice `nice`, as
    `smx run` does for the core: with autogroup, sessions compete as groups, and a process's own
    nice ranks it only within its session. Nothing where the kernel has no autogroup."""
    if nice:
        with contextlib.suppress(FileNotFoundError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


class BenchCore(CoreProcess):
    """`smx core` as its own process, like CoreProcess, but with the production config by
    default (CoreProcess forces a 200 ms history flush for tests; production flushes every 2 s)
    and optionally under cProfile (the profile is written when the core exits on SIGTERM).
    `wrapper`: a command the interpreter runs under (e.g. valgrind), `startup_s` its time to
    answer."""

    def __init__(
        self,
        site: Site,
        core_toml: str = "",
        profile: Path | None = None,
        wrapper: Sequence[str] = (),
        startup_s: float = 15.0,
        nice: int = 0,
    ) -> None:
        self.site = site
        (site.home / "core.toml").write_text(core_toml)
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
        self.log = open(site.home / "core.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*priority(nice), *wrapper, sys.executable, *prefix, "-m", "trusted.cli.main"]
            + ["--home", str(site.home), "core"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # a session of its own, as `smx run` starts it
        )
        group_priority(self.proc.pid, nice)
        self.wait_healthy(startup_s)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return rss_mb(self.ps)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as the supervisor does; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


class BareServer:
    """The baseline: bare_server.py in its own process, same site credentials, own socket;
    `wrapper` and `startup_s` as for BenchCore."""

    def __init__(
        self,
        site: Site,
        name: str = "bare.sock",
        uvloop: bool = False,
        wrapper: Sequence[str] = (),
        startup_s: float = 15.0,
        nice: int = 0,
    ) -> None:
        self.socket = site.home / name
        self.target = unix_target(self.socket)
        pki = site.home / "pki"
        self.log = open(site.home / "bare.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*priority(nice), *wrapper, sys.executable, str(BARE_SERVER), "--pki", str(pki)]
            + ["--socket", str(self.socket)]
            + (["--uvloop"] if uvloop else []),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
        group_priority(self.proc.pid, nice)
        self.ps = psutil.Process(self.proc.pid)
        self._wait_ready(site.creds("meter"), startup_s)

    def _wait_ready(self, creds: Credentials, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bare server exited with {self.proc.returncode}")
            if self.socket.exists():
                with creds.channel(self.target) as ch:
                    try:
                        ch.unary_unary(ECHO)(b"ping", timeout=1)
                        return
                    except grpc.RpcError:
                        pass
            time.sleep(0.05)
        raise TimeoutError(f"bare server on {self.socket} did not answer")

    def rss_mb(self) -> float:
        return rss_mb(self.ps)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def aio_channel(creds: Credentials, target: str, own_connection: bool = False) -> grpc.aio.Channel:
    """A client channel as smx.client makes it; `own_connection` keeps grpc from sharing one
    HTTP/2 connection between channels of the same process (each subscriber is its own client)."""
    options = list(CHANNEL_OPTIONS)
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.secure_channel(target, creds.grpc(), options=options)


def smaps_rollup(pid: int) -> dict[str, int]:
    """RSS, PSS and USS of `pid` in bytes from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * 1024
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0), "uss": uss}


def rss_mb(ps: psutil.Process) -> float:
    return ps.memory_info().rss / 2**20


@dataclass
class ThreadCPU:
    """CPU seconds per thread of a process, from /proc (Linux): where the core's time goes
    between its event-loop thread and grpc's and the history writer's threads."""

    pid: int

    def snapshot(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            # "tid (comm) state ..." and comm may hold spaces: split after the last ')'.
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
        return out

    def groups(
        self, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
    ) -> dict[str, float]:
        """CPU seconds between two snapshots, by kind of thread: `main` (the asyncio loop, where
        all Python request handling runs), `grpc` (grpc's C-core event-engine threads) and
        `other` (e.g. the history writer's executor thread)."""
        out = {"main": 0.0, "grpc": 0.0, "other": 0.0}
        for tid, (comm, cpu) in after.items():
            spent = cpu - before.get(tid, (comm, 0.0))[1]
            if tid == self.pid:
                out["main"] += spent
            elif comm.startswith(("event_engine", "grpc")):
                out["grpc"] += spent
            else:
                out["other"] += spent
        return out

    def delta(
        self, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
    ) -> list[tuple[str, float]]:
        """(label, CPU seconds) per thread between two snapshots, busiest first."""
        rows = []
        for tid, (comm, cpu) in after.items():
            spent = cpu - before.get(tid, (comm, 0.0))[1]
            if spent <= 0:
                continue
            label = f"{comm} (main: asyncio loop)" if tid == self.pid else f"{comm} [{tid}]"
            rows.append((label, spent))
        return sorted(rows, key=lambda r: -r[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def fmt_table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def target_line(what: str, value: float, limit: float, unit: str, higher_is_better: bool) -> str:
    met = value >= limit if higher_is_better else value <= limit
    sign = ">=" if higher_is_better else "<="
    if met:
        verdict = "MET"
    else:
        missed = (limit - value) / limit if higher_is_better else (value - limit) / limit
        verdict = f"MISSED by {missed:.0%}"
    return f"target {what} {sign} {limit:g} {unit}: {value:.3g} {unit} -> {verdict}"
