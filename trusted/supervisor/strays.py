"""Processes that left their process group: found and stopped by the supervisor.

Stopping a process signals its whole process group, but a helper that double-forks into a new
session (``setsid``) escapes the group and would outlive a stop, a restart, even the site. The
supervisor is therefore the *child subreaper* of its tree (``PR_SET_CHILD_SUBREAPER``): an
orphan anywhere below it is re-parented to it instead of to init, so every escaped process
becomes one of its direct children. A direct child that is not a process the supervisor started
itself is a stray. `sweep`:

- a stray whose ``SMX_NAME`` (inherited from the process it came from) names a process that is
  still running is left alone: a helper of a live process;
- any other stray (its process stopped or died, or it cleared its environment) gets SIGKILL,
  with one WARNING line naming the process it came from;
- strays that ended are reaped, so none stays a zombie.

`sweep(..., everything=True)` (the end of the site) kills every stray. The caller must not sweep
while it is itself starting a process (the new child is not in ``own`` yet).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Collection

import psutil

from smx.process_env import ENV_NAME

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


def sweep(own: Collection[int], running: Collection[str], *, everything: bool = False) -> list[int]:
    """Kill the strays among this process's children (see the module docstring); ``own``: the
    pids the supervisor started, ``running``: the names of the processes still running. The
    pids killed."""
    killed: list[int] = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return killed
    for child in children:
        if child.pid in own:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                _reap(child.pid)
                continue
            cmd = " ".join(child.cmdline())[:120]
        except psutil.Error:
            continue
        origin = _origin(child)
        if not everything and origin and origin in running:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)
            log.warning(
                "%s left a process behind (pid %d: %s): killed",
                origin or "a process that hid its name",
                child.pid,
                cmd or "?",
            )
        _reap(child.pid)  # or at the next sweep, once it is gone
    return killed


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
