"""Processes that left their process group: found and stopped by the supervisor.

Stopping a process signals its whole process group, but a helper that double-forks into a new
session (``setsid``) escapes the group and would outlive a stop, a restart, even the site. The
supervisor is therefore the *child subreaper* of its tree (``PR_SET_CHILD_SUBREAPER``): an
orphan anywhere below it is re-parented to it instead of to init, so every escaped process
becomes one of its direct children. A direct child that is not a process the supervisor started
itself is a stray. `sweep`:

- a stray of a process that is still running is left alone: a helper of a live process. Under
  isolation a stray belongs to the process whose user it runs as; otherwise to the process its
  inherited ``SMX_NAME`` names;
- any other stray (its process stopped or died, or it cleared its environment) gets SIGKILL,
  with one WARNING line per process it came from;
- strays that ended are reaped, so none stays a zombie.

`sweep(..., everything=True)` (the end of the site) kills every stray. Under isolation the
supervisor also kills every process of a process's user each time that process ends
(isolation.kill_all_argv): that reaches helpers hopping through new sessions faster than a
sweep looks. The caller must not sweep
while it is itself starting a process (the new child is not in ``own`` yet).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Collection, Mapping

import psutil

from smx.process_env import ENV_NAME
from smx.terminal import printable

__all__ = ["become_subreaper", "sweep"]

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where Linux refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _origin(proc: psutil.Process) -> str:
    try:
        return proc.environ().get(ENV_NAME, "")
    except psutil.Error:
        return ""


def sweep(
    own: Collection[int],
    running: Collection[str],
    *,
    everything: bool = False,
    users: Mapping[int, str] | None = None,
) -> list[int]:
    """Kill the strays among this process's children (see the module docstring); ``own``: the
    pids the supervisor started, ``running``: the names of the processes still running,
    ``users``: under isolation, the process name of each uid (a stray's origin is then its
    user, which it cannot change). The pids killed; one WARNING line per origin."""
    killed: dict[str, list[tuple[int, str]]] = {}
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for child in children:
        if child.pid in own:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                _reap(child.pid)
                continue
            origin = users.get(child.uids().real, "") if users is not None else _origin(child)
            if not everything and origin and origin in running:
                continue
            cmd = " ".join(child.cmdline())[:120]
        except psutil.Error:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child.pid, signal.SIGKILL)
            killed.setdefault(origin, []).append((child.pid, cmd))
        _reap(child.pid)  # or at the next sweep, once it is gone
    for origin, procs in sorted(killed.items()):
        pid, cmd = procs[0]
        log.warning(
            "%s left %d process(es) behind: killed (pid %d: %s%s)",
            printable(origin) or "a process that hid its name",
            len(procs),
            pid,
            printable(cmd) or "?",
            f" and {len(procs) - 1} more" if len(procs) > 1 else "",
        )
    return [pid for procs in killed.values() for pid, _ in procs]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
