"""The supervisor's run directory (``<home>/run``): where each process's files live, the health
files the processes write, and ``supervisor.json``, the state ``smx status`` reads.

The layout of the run directory (`RunPaths`) and the health file (`read_health_file`) are shared
contracts with the processes: they live in smx.process_env and smx.health.

``supervisor.json`` (rewritten atomically on every change and every STATUS_HEARTBEAT_S)::

    {"version": 1, "site": "usm-0017", "home": "/var/lib/smx", "config": "/etc/smx/site.toml",
     "pid": 4242, "pid_created": 1764140000.12, "started_at": 1764140000.5,
     "updated_at": 1764140123.0, "state": "starting|running|stopping|stopped|failed",
     "error": null,
     "processes": [
       {"name": "meter", "kind": "core|extension|agent|simulator", "pid": 4250,
        "pid_created": 1764140001.3, "state": "starting|running|backoff|stopped|failed",
        "restarts": 1, "started_at": 1764140100.0, "last_exit": "killed by SIGKILL",
        "last_exit_code": -9, "last_error": "...", "health": "running",
        "health_error": "", "next_start": null, "log": "/var/lib/smx/run/logs/meter.log",
        "nice_wanted": null, "forked_from": "fork-server-trusted"}],
     "fork_servers": [{"name": "fork-server-trusted", "kind": "fork-server", "pid": 4249,
       "pid_created": 1764140001.1, "started_at": 1764140001.0, "restarts": 0}]}

Times are Unix seconds. ``health`` is what ``smx status`` shows: for a process that is not
running ``down`` or ``backoff``; for the core ``serving`` (its health file fresh and
``running``, and a TLS handshake on its socket accepted), ``unreachable`` (the handshake
failed), ``no heartbeat`` or the other state of its health file; for an extension or agent the
``state`` of its fresh health file (see smx.health: ``starting``, ``running``, ``degraded``,
``stopping`` or ``failed``), else ``no heartbeat``; for a simulator ``-``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import psutil

from smx.health import read_health_file
from smx.process_env import RunPaths
from smx.terminal import printable

# Certificates the supervisor issues besides the site's processes: the operator's CLI and its
# own (for its TLS handshake with the core).
ADMIN_NAME = "admin"
SUPERVISOR_NAME = "supervisor"


class ProvisionError(Exception):
    """The site cannot be set up: PKI, policy or a file; the message names which."""


__all__ = [
    "STATUS_VERSION",
    "RunPaths",
    "format_status",
    "pid_alive",
    "read_health_file",
    "read_status",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

STATUS_VERSION = 1
# How often the supervisor rewrites supervisor.json when nothing changes (runner.py).
STATUS_HEARTBEAT_S = 30.0


def write_json_atomic(path: Path, data: Any, mode: int = 0o640) -> None:
    """Write JSON via a temp file and rename: readers see the old or the new file, never half.

    No fsync: these are runtime files, rewritten every few seconds (SD card wear)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """supervisor.json, or None when there is none or it cannot be read as such."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("processes"), list):
        return None
    return raw


def created_at(pid: int) -> float | None:
    """When process ``pid`` started (what `pid_alive` compares), or None if it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def pid_alive(pid: Any, created: Any = None) -> bool:
    """Is ``pid`` a live process, and (when ``created`` is given) the same one that was started
    then, not a later process that reused the pid?"""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if isinstance(created, int | float) and abs(proc.create_time() - created) > 1.0:
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return True


_HEADER = (
    "NAME",
    "KIND",
    "STATE",
    "HEALTH",
    "PID",
    "NICE",
    "RESTARTS",
    "UPTIME",
    "PSS MiB",
    "LAST EXIT",
    "LAST ERROR",
)


def memory_of(pid: Any, created: Any = None) -> dict[str, int] | None:
    """RSS, PSS and USS of a live process in bytes; None if it is gone or not ours to read.
    PSS is the figure to add up: RSS counts the pages processes share (Python, grpc, OpenSSL)
    once per process, PSS divides them among the processes that map them."""
    return _readings(pid, created)[0]


def _readings(pid: Any, created: Any) -> tuple[dict[str, int] | None, int | None]:
    """`memory_of` and the CPU priority of a live process (the core's: supervisor.core_nice)."""
    if not pid_alive(pid, created):
        return None, None
    try:
        proc = psutil.Process(pid)
        info, nice = proc.memory_full_info(), int(proc.nice())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None, None
    memory = {"rss": int(info.rss), "pss": int(getattr(info, "pss", 0)), "uss": int(info.uss)}
    return memory, nice


def add_memory(status: dict[str, Any]) -> None:
    """Each running process's `memory` and `nice` (and the supervisor's memory, and their
    `memory_total`; `memory_site` leaves the simulators out: what a production site runs),
    read now from /proc: what `smx status` shows."""
    own = memory_of(status.get("pid"), status.get("pid_created"))
    status["memory"] = own
    found = [own] if own else []
    site = list(found)
    for proc in _entries(status):
        if proc.get("state") in ("starting", "running"):
            proc["memory"], proc["nice"] = _readings(proc.get("pid"), proc.get("pid_created"))
            if proc["memory"]:
                found.append(proc["memory"])
                if proc.get("kind") != "simulator":
                    site.append(proc["memory"])
    status["memory_total"] = _sum(found) if found else None
    status["memory_site"] = _sum(site) if found else None


def _sum(memories: list[dict[str, int]]) -> dict[str, int]:
    return {key: sum(m[key] for m in memories) for key in ("rss", "pss", "uss")}


def _entries(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The processes, then the fork servers they were forked from
    (trusted.supervisor.fork_server): their memory is the site's too."""
    entries = []
    for key in ("processes", "fork_servers"):
        items = status.get(key)
        entries += [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []
    return entries


def _mb(memory: Any, key: str = "pss") -> str:
    if not isinstance(memory, dict) or not isinstance(memory.get(key), int):
        return ""
    return f"{memory[key] / 2**20:.1f}"


def _nice(proc: dict[str, Any]) -> str:
    """Its CPU priority, and the one it should have had when they differ."""
    nice, wanted = proc.get("nice"), proc.get("nice_wanted")
    if nice is None or wanted is None or nice == wanted:
        return "" if nice is None else str(nice)
    return f"{nice} (wanted {wanted})"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return printable(str(value))


def format_status(status: dict[str, Any], running: bool, now: float | None = None) -> str:
    """The table `smx status` prints, with a header line about the supervisor itself."""
    now = time.time() if now is None else now
    site = status.get("site", "?")
    pid = status.get("pid")
    if running:
        up = _ago(now - float(status.get("started_at") or now))
        head = f"site {site}: supervisor pid {pid}, {status.get('state', '?')}, up {up}"
        updated = status.get("updated_at")
        if isinstance(updated, int | float) and now - updated > 2 * STATUS_HEARTBEAT_S + 15:
            head += f" (status not updated for {_ago(now - updated)}: supervisor stuck?)"
    elif status.get("state") in ("stopped", "failed"):
        head = f"site {site}: supervisor not running (last pid {pid}, {status['state']})"
    else:
        head = (
            f"site {site}: supervisor not running: pid {pid} died without stopping its "
            "processes (the next `smx run` stops any that are left)"
        )
    if status.get("error"):
        head += f"\nerror: {printable(str(status['error']))}"
    rows = [_HEADER]
    cut: list[tuple[str, str]] = []  # errors too long for the table, shown whole below it
    for p in _entries(status):
        state = p.get("state")
        uptime = ""
        if state in ("starting", "running") and isinstance(p.get("started_at"), int | float):
            uptime = _ago(now - p["started_at"])
        elif state == "backoff" and isinstance(p.get("next_start"), int | float):
            uptime = f"restart in {_ago(p['next_start'] - now)}"
        # A running process: what troubles it now; else why it last stopped.
        if state in ("starting", "running"):
            error = p.get("health_error") or ""
        else:
            error = p.get("last_error") or p.get("health_error") or ""
        rows.append(
            (
                _cell(p.get("name")),
                _cell(p.get("kind")),
                _cell(state),
                _cell(p.get("health")),
                _cell(p.get("pid") if state in ("starting", "running") else None),
                _cell(_nice(p) if state in ("starting", "running") else None),
                _cell(p.get("restarts", 0)),
                _cell(uptime),
                _cell(_mb(p.get("memory"))),
                _cell(p.get("last_exit")),
                _cell(error if len(error) <= 80 else error[:77] + "..."),
            )
        )
        if len(error) > 80:
            cut.append((_cell(p.get("name")), _cell(error)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    out = head + "\n" + "\n".join(line.rstrip() for line in lines)
    # The end of an error is often what to do (the key it meant, the command to run).
    out += "".join(f"\n{name}: {error}" for name, error in cut)
    total, site_only = status.get("memory_total"), status.get("memory_site")
    if isinstance(total, dict) and running:
        out += (
            f"\nmemory, supervisor and processes: {_mb(total)} MiB PSS "
            f"({_mb(total, 'uss')} MiB USS, {_mb(total, 'rss')} MiB RSS summed; "
            f"supervisor {_mb(status.get('memory')) or '?'} MiB PSS)"
        )
        if isinstance(site_only, dict) and site_only != total:
            out += f"\nwithout the simulators: {_mb(site_only)} MiB PSS"
    return out
