"""One supervised OS process: start, restart with exponential back-off, stop in order.

Each process runs in its own session (``start_new_session``), so a Ctrl-C in the terminal reaches
only the supervisor, which then stops the processes in order; signals go to the whole process
group so helpers a process spawned do not outlive it. stdout and stderr are appended to the
process's log file; the last non-empty line written there since the start becomes
``last_error`` when the process dies without being asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from smx.files import read_regular_file
from trusted.supervisor.site_config import SupervisorSettings

__all__ = ["LOG_ROTATE_BYTES", "ManagedProcess", "describe_exit", "signal_group"]

log = logging.getLogger(__name__)

# A log bigger than this is moved to <name>.log.1 when the process (re)starts.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
_TAIL_BYTES = 8192
_MAX_ERROR = 300


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``, from a subprocess return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group that is gone is fine."""
    # The process leads its own group (start_new_session): this also reaches its helpers.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _last_line(path: Path, offset: int) -> str:
    """The last non-empty line written to ``path`` after ``offset``. The process may have
    replaced its log (a FIFO, a link): smx.files reads only a regular file, never blocking."""
    tail = read_regular_file(path, _TAIL_BYTES, start=offset, tail=True)
    if tail is None:
        return ""
    for line in reversed(tail.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line:
            return line if len(line) <= _MAX_ERROR else line[: _MAX_ERROR - 3] + "..."
    return ""


def open_log(path: Path) -> int:
    """The log file `path` opened for appending (rotated first when large), through directories
    the supervisor itself owns, never following a link.

    The supervisor may be root and the site home its core's user's: a process could swap
    `run/` or `run/logs/` for its own directory with a link in it, and root would then create
    or append to any file. So `run/` and `run/logs/` are opened without following links and
    must belong to the supervisor's user, and the log itself is opened relative to them.
    """
    me = os.geteuid()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    run_fd = os.open(path.parent.parent, flags)
    try:
        logs_fd = os.open(path.parent.name, flags, dir_fd=run_fd)
    finally:
        os.close(run_fd)
    try:
        # A swapped run/ can only hold a logs/ its swapper owns: checking logs/ is enough.
        if os.fstat(logs_fd).st_uid != me:
            raise PermissionError(f"{path.parent} is not the supervisor's own directory: refusing")
        with contextlib.suppress(FileNotFoundError):
            info = os.stat(path.name, dir_fd=logs_fd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_size > LOG_ROTATE_BYTES:
                os.replace(path.name, path.name + ".1", src_dir_fd=logs_fd, dst_dir_fd=logs_fd)
        fd = os.open(
            path.name,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=logs_fd,
        )
    finally:
        os.close(logs_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != me:
        os.close(fd)
        raise PermissionError(f"{path} is not a plain file of the supervisor's: refusing")
    return fd


class ManagedProcess:
    """A process the supervisor keeps running until :meth:`stop`.

    ``state``: ``stopped`` (not started yet, or stopped on request), ``starting`` (spawned, not
    yet seen healthy), ``running``, ``backoff`` (crashed, waiting to restart), ``failed`` (will
    not be restarted). ``health`` is set by the supervisor from its own checks.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        settings: SupervisorSettings,
        on_change: Callable[[], None],
        health_file: Path | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        # `wrap` starts the program through the privilege drop of trusted.supervisor.isolation
        # (None: the child keeps the supervisor's user).
        self.argv = wrap(list(argv)) if wrap is not None else list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.health_file = health_file
        self.settings = settings
        self.restart_on_crash = True
        self.state = "stopped"
        self.pid: int | None = None
        self.pid_created: float | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.next_start: float | None = None
        self.last_exit: str | None = None
        self.last_exit_code: int | None = None
        self.last_error: str | None = None
        self.health = "down"
        self.health_error = ""
        self.healthy_since: float | None = None  # monotonic
        self._on_change = on_change
        self._delay = settings.backoff_initial
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    # --- control

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")

    async def stop(self) -> None:
        """Stop for good: SIGTERM, SIGKILL after the stop timeout; returns once it is gone."""
        self._stop.set()
        if self._task is not None:
            await self._task

    def fail(self, reason: str) -> None:
        """Mark as not startable (e.g. its certificate was revoked); it is never spawned."""
        self.state, self.last_error, self.health = "failed", reason, "down"
        self._on_change()

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "running")

    def set_health(self, health: str, healthy: bool, error: str = "") -> None:
        """Record the supervisor's latest health reading; the first healthy reading turns
        ``starting`` into ``running`` and starts the clock for resetting the back-off."""
        if not self.alive:
            return
        changed = (health, error) != (self.health, self.health_error)
        self.health, self.health_error = health, error
        if healthy:
            if self.healthy_since is None:
                self.healthy_since = time.monotonic()
            if self.state == "starting":
                self.state, changed = "running", True
        else:
            self.healthy_since = None
        if changed:
            self._on_change()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "pid_created": self.pid_created,
            "state": self.state,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "next_start": self.next_start,
            "last_exit": self.last_exit,
            "last_exit_code": self.last_exit_code,
            "last_error": self.last_error,
            "health": self.health,
            "health_error": self.health_error,
            "log": str(self.log_path),
        }

    # --- the supervising task

    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                proc = await self._spawn()
                if proc is not None:
                    stopped = await self._watch(proc)
                    if stopped:
                        break
                if self._stop.is_set():
                    break
                if not self.restart_on_crash:
                    self.state, self.health = "failed", "down"
                    self._on_change()
                    return
                if not await self._backoff():
                    break
                self.restarts += 1
        finally:
            proc = self._proc
            if proc is not None and proc.returncode is None:  # cancelled or a bug: no orphans
                signal_group(proc.pid, signal.SIGKILL)
            if self.state != "failed":
                self.state, self.health, self.next_start = "stopped", "down", None
                self._on_change()

    async def _spawn(self) -> asyncio.subprocess.Process | None:
        """Start the process; on failure record why and return None (treated as a crash)."""
        self.healthy_since = None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self.health_file is not None:
                # A health file left by the previous run must not pass for this one's.
                self.health_file.unlink(missing_ok=True)
            fd = open_log(self.log_path)
            try:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                os.write(fd, f"--- smx run: starting {self.name} at {stamp}\n".encode())
                self._log_offset = os.fstat(fd).st_size
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            finally:
                os.close(fd)
        except (OSError, subprocess.SubprocessError) as err:
            self.pid = None
            self.last_exit, self.last_exit_code = "did not start", None
            why = err.strerror if isinstance(err, OSError) and err.strerror else err
            self.last_error = f"cannot start {self.argv[0]}: {why}"
            log.error("%s: %s", self.name, self.last_error)
            return None
        self._proc, self.pid = proc, proc.pid
        try:
            self.pid_created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            self.pid_created = None
        self.started_at = time.time()
        self.next_start = None
        self.state = "starting"
        self.health = "no heartbeat" if self.health_file is not None else "-"
        self.health_error = ""
        log.info("%s started (pid %d)", self.name, proc.pid)
        self._on_change()
        return proc

    async def _watch(self, proc: asyncio.subprocess.Process) -> bool:
        """Wait for the process to exit or for a stop request; True if it was stopped."""
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not exited.done():
            await self._terminate(proc)
            exited.cancel()
        rc = proc.returncode
        assert rc is not None
        signal_group(proc.pid, signal.SIGKILL)  # helpers it left behind
        self.last_exit, self.last_exit_code = describe_exit(rc), rc
        if self._stop.is_set():
            log.info("%s stopped (%s)", self.name, self.last_exit)
            return True
        line = _last_line(self.log_path, self._log_offset)
        if rc == 0:
            self.last_error = line or "exited with code 0 without being asked to stop"
        else:
            self.last_error = line or self.last_exit
        log.warning("%s died (%s): %s", self.name, self.last_exit, self.last_error)
        return False

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self.settings.stop_timeout):
                await proc.wait()
        except TimeoutError:
            log.warning(
                "%s did not stop within %gs of SIGTERM: SIGKILL",
                self.name,
                self.settings.stop_timeout,
            )
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _backoff(self) -> bool:
        """Wait before the next start; False if a stop request came in meanwhile."""
        now = time.monotonic()
        if (
            self.healthy_since is not None
            and now - self.healthy_since >= self.settings.stable_after
        ):
            self._delay = self.settings.backoff_initial
        delay = self._delay
        self._delay = min(self._delay * 2, self.settings.backoff_max)
        self.state, self.health = "backoff", "backoff"
        self.next_start = time.time() + delay
        self.healthy_since = None
        log.info("%s: restart in %gs", self.name, delay)
        self._on_change()
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            return True
        return False
