"""One supervised OS process: start, restart with exponential back-off, stop in order.

Each process runs in its own session (``start_new_session``), so a Ctrl-C in the terminal reaches
only the supervisor, which then stops the processes in order; signals go to the whole process
group so helpers a process spawned do not outlive it. stdout and stderr go through a pipe into
the process's log (process_log.py: bounded in size and rate); the last non-empty line of a run
becomes ``last_error`` when the process dies without being asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from smx.aio import wait_event
from smx.terminal import printable
from trusted.supervisor.fork_server import ForkedChild, ForkServer, ForkServerError, SpawnRequest
from trusted.supervisor.isolation import KILLED_SOME
from trusted.supervisor.process_log import ProcessLog
from trusted.supervisor.site_config import SupervisorSettings
from trusted.supervisor.status import created_at

__all__ = ["ManagedProcess", "describe_exit", "signal_group"]

log = logging.getLogger(__name__)

# After the process exits, its helpers may still hold the pipe: its log is read so much longer.
_DRAIN_SECONDS = 2.0


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


# Killers share the reaper's real uid, so one could signal another: they run one at a time.
_KILLERS = asyncio.Lock()
_KILL_TIMEOUT = 10.0


async def kill_user(name: str, argv: Sequence[str], holder: Any = None) -> None:
    """Run a killer command of trusted.supervisor.isolation (`kill_all_argv`) for process
    ``name``; ``holder.helper_pid`` shows its pid meanwhile (it is no stray)."""
    async with _KILLERS:
        if holder is not None:
            holder.spawning = True  # no sweep before its pid is known
        try:
            killer = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, cwd="/", start_new_session=True
            )
        except OSError as err:
            log.error("%s: cannot kill what is left of it: %s", name, err)
            return
        finally:
            if holder is not None:
                holder.spawning = False
        if holder is not None:
            holder.helper_pid = killer.pid
        try:
            async with asyncio.timeout(_KILL_TIMEOUT):
                rc = await killer.wait()
        except TimeoutError:
            signal_group(killer.pid, signal.SIGKILL)
            await killer.wait()
            log.error("%s: killing what is left of it took over %gs: gave up", name, _KILL_TIMEOUT)
            return
        finally:
            if holder is not None:
                holder.helper_pid = None
        if rc == KILLED_SOME:
            log.warning("%s left process(es) behind: killed every process of its user", name)


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
        kill_user: Sequence[str] | None = None,
        nice: int | None = None,
        fork: tuple[ForkServer, SpawnRequest] | None = None,
    ) -> None:
        self.name = name
        # Forked from a fork server (trusted.supervisor.fork_server) instead of started from
        # `argv`: the same process, sharing the server's pre-imported memory.
        self.fork = fork
        self.forked_from: str | None = None  # the server of the current run, if forked
        # The CPU priority `wrap` starts it at (the core's supervisor.core_nice), checked once it
        # runs: without CAP_SYS_NICE it runs at the supervisor's.
        self.nice_wanted = nice
        # `kill_user`: a command killing every process of the process's own user (isolation),
        # run each time it ends, so that no helper outlives it.
        self.kill_user = list(kill_user) if kill_user else None
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
        self._proc: asyncio.subprocess.Process | ForkedChild | None = None
        self.spawning = False
        self.helper_pid: int | None = None  # a killer of its user's processes, while it runs
        self.output = ProcessLog(log_path, max_bytes=settings.log_max_size, rate=settings.log_rate)
        self._pump: asyncio.Task[None] | None = None

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
                self._check_priority()
        else:
            self.healthy_since = None
        if changed:
            self._on_change()

    def _check_priority(self) -> None:
        if self.nice_wanted is None or self.pid is None:
            return
        try:
            nice = psutil.Process(self.pid).nice()
        except psutil.Error:
            return
        if nice != self.nice_wanted:
            log.warning(
                "%s runs at nice %d, not supervisor.core_nice = %d: setting it needs root with "
                "CAP_SYS_NICE (or set core_nice = 0)",
                self.name,
                nice,
                self.nice_wanted,
            )

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
            "nice_wanted": self.nice_wanted,
            "forked_from": self.forked_from,
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
            if self._pump is not None:
                self._pump.cancel()
            self.output.close()
            if self.state != "failed":
                self.state, self.health, self.next_start = "stopped", "down", None
                self._on_change()

    async def _spawn(self) -> asyncio.subprocess.Process | ForkedChild | None:
        """Start the process; on failure record why and return None (treated as a crash)."""
        self.healthy_since = None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self.health_file is not None:
                # A health file left by the previous run must not pass for this one's.
                self.health_file.unlink(missing_ok=True)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.output.start_run(f"--- smx run: starting {self.name} at {stamp}")
            read_fd, write_fd = os.pipe()
            self.spawning = True  # not swept as a stray before its pid is known
            try:
                proc: asyncio.subprocess.Process | ForkedChild | None = None
                self.forked_from = None
                if self.fork is not None:
                    server, request = self.fork
                    try:
                        proc = await server.spawn(request, write_fd)
                        self.forked_from = server.name
                    except ForkServerError as err:  # the site runs on without the saving
                        log.warning("%s: %s: starting it on its own", self.name, err)
                if proc is None:
                    proc = await asyncio.create_subprocess_exec(
                        *self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=write_fd,
                        stderr=subprocess.STDOUT,
                        env=self.env,
                        cwd=self.cwd,
                        start_new_session=True,
                    )
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                self.spawning = False
                os.close(write_fd)
            self._pump = asyncio.create_task(self.output.pump(read_fd), name=f"log-{self.name}")
        except (OSError, subprocess.SubprocessError) as err:
            self.pid = None
            self.last_exit, self.last_exit_code = "did not start", None
            why = err.strerror if isinstance(err, OSError) and err.strerror else err
            self.last_error = f"cannot start {self.argv[0]}: {why}"
            log.error("%s: %s", self.name, self.last_error)
            return None
        self._proc, self.pid = proc, proc.pid
        self.pid_created = created_at(proc.pid)
        self.started_at = time.time()
        self.next_start = None
        self.state = "starting"
        self.health = "no heartbeat" if self.health_file is not None else "-"
        self.health_error = ""
        how = f", forked from {self.forked_from}" if self.forked_from else ""
        log.info("%s started (pid %d%s)", self.name, proc.pid, how)
        self._on_change()
        return proc

    async def _watch(self, proc: asyncio.subprocess.Process | ForkedChild) -> bool:
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
        if isinstance(proc, ForkedChild):
            proc.release()  # its pid may be reused from now on: no more signals to it
        await self.kill_helpers()
        await self._drain()
        self.last_exit, self.last_exit_code = describe_exit(rc), rc
        if self._stop.is_set():
            log.info("%s stopped (%s)", self.name, self.last_exit)
            return True
        line = self.output.last_line()
        if isinstance(proc, ForkedChild) and proc.why:
            self.last_error = proc.why  # killed because its fork server ended
        elif rc == 0:
            self.last_error = line or "exited with code 0 without being asked to stop"
        elif rc < 0:
            # Killed by a signal: it wrote no reason, its last line is whatever it was doing.
            self.last_error = self.last_exit
        else:
            self.last_error = line or self.last_exit
        # What the process wrote must not forge lines or send escapes in the supervisor's log.
        log.warning("%s died (%s): %s", self.name, self.last_exit, printable(self.last_error))
        return False

    async def kill_helpers(self) -> None:
        """Kill what is left of the process's own user (helpers that left its group)."""
        if self.kill_user is not None:
            await kill_user(self.name, self.kill_user, self)

    async def _drain(self) -> None:
        """Let the log take in what the process wrote before it ended."""
        pump, self._pump = self._pump, None
        if pump is None:
            return
        done, _ = await asyncio.wait({pump}, timeout=_DRAIN_SECONDS)
        if not done:  # a helper that left the process group still holds the pipe
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        elif pump.exception() is not None:
            log.warning("%s: its log could not be written: %s", self.name, pump.exception())

    async def _terminate(self, proc: asyncio.subprocess.Process | ForkedChild) -> None:
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
        return not await wait_event(self._stop, delay)
