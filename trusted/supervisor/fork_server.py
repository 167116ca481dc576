"""A fork server: one pre-imported process image that the supervisor's Python children are
forked from, so that the memory of grpc, protobuf and the SDK is shared instead of loaded again
by every process (docs/SITE.md, "Fork servers"; the measurement in docs/PERFORMANCE.md).

Both sides of one contract live here. The supervisor holds a `ForkServer` per trust domain
(the trusted extensions, the untrusted agents: never shared between them, as every child of one
server shares its memory layout). The server is a fresh interpreter (`python -s -c`, as root
under isolation) that runs `serve`: it imports `PRELOAD`, freezes that heap (`gc.freeze`: a
child's collections then never write to the shared pages), and waits on a socket pair. For each
request (JSON, with the child's log pipe passed as a descriptor) it forks; the child does what
the privilege-drop wrapper does before exec (trusted.supervisor.isolation: a session of its
own, stdin /dev/null, stdout and stderr to its log, no other descriptor, its own environment,
the privilege drop, its working directory) and then runs its module as ``__main__``. The server
reaps its children and reports each exit status; the supervisor signals them itself (each leads
its own process group, as a child it started would).

grpc allows this: a process may fork as long as it has created no channel, server or call
(grpc's doc/fork_support.md); importing grpc, grpc.aio and the stubs creates none and starts no
thread. The server checks it is single-threaded before it serves. If the server dies, its
children die with it (PR_SET_PDEATHSIG) and are reported ended; the next start makes a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["PRELOAD", "ForkServer", "ForkServerError", "ForkedChild", "SpawnRequest", "serve"]

# What the image imports before it forks: what every SDK process imports first. Only code of
# the installation (never the site's home: the server runs as root). The SDK's Modbus and
# SunSpec code too was measured: no gain for two users of it (docs/PERFORMANCE.md, run 13).
PRELOAD = (
    "asyncio",
    "ssl",
    "grpc",
    "grpc.aio",
    "grpc_health.v1.health_pb2",
    "google.protobuf",
    "google.protobuf.duration_pb2",
    "google.protobuf.timestamp_pb2",
    "smx.client",
    "smx.sdk",
    "extensions.sdk",
    "smx.v1.admin_service_pb2_grpc",
    "smx.v1.control_service_pb2_grpc",
    "smx.v1.errors_pb2",
    "smx.v1.identity_service_pb2_grpc",
    "smx.v1.point_pb2",
    "smx.v1.point_service_pb2_grpc",
)
_ROOT = Path(__file__).resolve().parents[2]
_MAX_MESSAGE = 256 * 1024  # a request: environment and arguments
_START_TIMEOUT = 60.0  # imports on a slow SD card
_RETRY_AFTER = 60.0  # a server that could not start is not tried again sooner
PR_SET_DUMPABLE = 4


@dataclasses.dataclass(frozen=True)
class SpawnRequest:
    """One child: `python -m module *args` with `env`, in `cwd`; under isolation `drop` is its
    privilege drop (trusted.supervisor.isolation.drop_spec)."""

    module: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    drop: Mapping[str, Any] | None = None


# ----------------------------------------------------------------------------- supervisor side


class ForkedChild:
    """A child of a fork server, as the supervisor sees it: what ManagedProcess uses of an
    asyncio subprocess (`pid`, `returncode`, `wait`), and `release`."""

    def __init__(self, pid: int, server: ForkServer) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.why: str | None = None
        self._ended = asyncio.Event()
        self._server = server

    def ended(self, returncode: int, why: str | None = None) -> None:
        """It ended with `returncode`; `why`, when the reason is not its own (its server
        ended)."""
        if self.returncode is None:
            self.returncode, self.why = returncode, why
            self._ended.set()

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode

    def release(self) -> None:
        """Done signalling its process group: the server may reap it. Until then it stays a
        zombie, so its pid (and group) cannot be reused by a process the supervisor would then
        signal by mistake."""
        self._server.release(self.pid)


class ForkServerError(OSError):
    """The fork server could not start, or could not start a child."""


class ForkServer:
    """The supervisor's handle on one fork server process, started at the first `spawn`."""

    def __init__(self, name: str, python: str, flags: tuple[str, ...] = ()) -> None:
        """`flags`: the interpreter's options (e.g. ``-OO``), every child's too."""
        self.name = name  # e.g. "fork-server-trusted", as `smx status` shows it
        self.python = python
        self.flags = flags
        self.pid: int | None = None
        self.pid_created: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._children: dict[int, ForkedChild] = {}
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lock = asyncio.Lock()  # one request at a time: replies come in order
        self._failed: tuple[float, str] | None = None  # when and why it last could not start
        self.starts = 0
        self.started_at: float | None = None
        self.spawning = False  # starting the server: its pid is not known yet (stray sweeps)

    def to_json(self) -> dict[str, Any]:
        return {  # shaped as a process's entry (ManagedProcess.to_json), so shown as one
            "name": self.name,
            "kind": "fork-server",
            "state": "running",  # only listed while it runs
            "health": "-",
            "pid": self.pid,
            "pid_created": self.pid_created,
            "started_at": self.started_at,
            "restarts": max(0, self.starts - 1),
        }

    async def spawn(self, request: SpawnRequest, out_fd: int) -> ForkedChild:
        """Fork a child writing to `out_fd`; raises ForkServerError if it cannot."""
        async with self._lock:
            if self._sock is None:
                failed = self._failed
                if failed is not None and time.monotonic() - failed[0] < _RETRY_AFTER:
                    raise ForkServerError(f"{self.name}: {failed[1]}")
                try:
                    await self._start()
                except ForkServerError as err:
                    self._failed = (time.monotonic(), str(err).removeprefix(f"{self.name}: "))
                    raise
            assert self._sock is not None
            data = json.dumps({"spawn": dataclasses.asdict(request)}).encode()
            if len(data) > _MAX_MESSAGE:
                raise ForkServerError(f"{self.name}: request of {len(data)} bytes: too large")
            try:
                socket.send_fds(self._sock, [data], [out_fd])
                async with asyncio.timeout(_START_TIMEOUT):
                    reply = await self._replies.get()
            except (OSError, TimeoutError) as err:
                await self._lost(f"{err}")
                raise ForkServerError(f"{self.name}: {err or 'no answer'}") from err
            if "error" in reply:
                raise ForkServerError(f"{self.name}: {reply['error']}")
            child: ForkedChild = reply["child"]  # registered by `_read`, maybe ended already
            return child

    def release(self, pid: int) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # a server gone has reaped nothing it keeps
                sock.send(json.dumps({"release": pid}).encode())

    async def close(self) -> None:
        """Stop the server (its children must be stopped first: the rest die with it)."""
        sock, self._sock = self._sock, None
        if self._reader is not None:  # first: a loop may hold the socket while it reads
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if sock is not None:
            sock.close()  # the server ends at end of input
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                async with asyncio.timeout(5.0):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._end_children("its fork server stopped")
        self.pid = None

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Not `-I`: its flags would be every child's (PYTHON* variables ignored, `-I` handed to
        # the Python helpers a child starts). Its environment is the supervisor's choice, and
        # the path gets the code's directory only (`-c` would add the working directory).
        code = (
            f"import sys; sys.path[0] = {str(_ROOT)!r}; "
            "from trusted.supervisor.fork_server import serve; serve(int(sys.argv[1]))"
        )
        self.spawning = True
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-s",
                *self.flags,
                "-c",
                code,
                str(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                # Its environment is in every child's memory (/proc/PID/environ shows it): none
                # of the supervisor's. Each child gets its own from its request.
                env={k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ},
                cwd="/",
                start_new_session=True,
            )
        except OSError as err:
            ours.close()
            raise ForkServerError(f"{self.name}: cannot start: {err.strerror or err}") from err
        finally:
            self.spawning = False
            theirs.close()
        ours.setblocking(False)
        self._proc, self._sock, self.pid = proc, ours, proc.pid
        from trusted.supervisor.status import created_at  # not in the image: psutil

        self.pid_created = created_at(proc.pid)
        self.starts, self.started_at = self.starts + 1, time.time()
        self._replies = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(ours), name=f"{self.name}-reader")
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                ready = await self._replies.get()
        except TimeoutError:
            ready = {"error": f"not ready within {_START_TIMEOUT:g}s"}
        if "ready" not in ready:
            await self._lost(str(ready.get("error", ready)))
            raise ForkServerError(f"{self.name}: {ready.get('error', 'did not start')}")
        log.info("%s started (pid %d)", self.name, proc.pid)

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(sock, _MAX_MESSAGE)
                if not data:
                    break
                msg = json.loads(data)
                if "exit" in msg:
                    child = self._children.pop(int(msg["exit"]), None)
                    if child is not None:
                        child.ended(int(msg["returncode"]))
                    continue
                if "pid" in msg:  # known before its exit report, however soon that comes
                    child = msg["child"] = ForkedChild(int(msg["pid"]), self)
                    self._children[child.pid] = child
                self._replies.put_nowait(msg)
        except (OSError, ValueError) as err:
            log.error("%s: %s", self.name, err)
        if self._sock is sock:  # not closed by us: the server died
            log.error("%s ended unexpectedly: its children were stopped", self.name)
            self._replies.put_nowait({"error": "the fork server ended"})
            self._sock = None
            sock.close()
            self._end_children("its fork server ended")

    async def _lost(self, why: str) -> None:
        log.error("%s: %s", self.name, why)
        await self.close()

    def _end_children(self, why: str) -> None:
        """Children of a server that is gone are gone too (PR_SET_PDEATHSIG): make sure, and
        report them killed."""
        children, self._children = self._children, {}
        for pid, child in children.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            child.ended(-signal.SIGKILL, why)


# ----------------------------------------------------------------------------- server side


def serve(fd: int) -> None:
    """The fork server's main: returns only in a forked child, which then runs its module."""
    import gc
    import importlib
    import selectors

    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    try:
        for name in (*PRELOAD, "trusted.supervisor.isolation"):  # the latter for the drop
            importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure ends the server, with why
        _send(sock, {"error": f"cannot import {name}: {err}"})
        sys.exit(1)
    gc.collect()
    gc.freeze()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # fork with other threads is not safe (grpc's rule)
        _send(sock, {"error": f"the image has {threads} threads after its imports, not 1"})
        sys.exit(1)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the supervisor only
    _send(sock, {"ready": os.getpid()})
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    children: set[int] = set()  # running
    exited: set[int] = set()  # reported, kept as zombies until released
    while True:
        for key, _ in sel.select():
            if key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _report_exits(sock, children, exited)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 1)
            except OSError:
                data, fds = b"", []
            if not data:  # the supervisor closed its end (or died): end, and the children
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                sys.exit(0)
            try:
                message = json.loads(data)
                if "release" in message:
                    _release(int(message["release"]), exited)
                    continue
                request = message["spawn"]
                if len(fds) != 1:
                    raise ValueError("a request passes exactly one descriptor, the log")
            except (ValueError, KeyError, TypeError) as err:
                for f in fds:
                    os.close(f)
                _send(sock, {"error": f"bad request: {err}"})
                continue
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                sel.close()
                sock.detach()  # its descriptor is closed with the others: never twice
                _become_child(request, fds[0], parent)
                return
            os.close(fds[0])
            children.add(pid)
            _send(sock, {"pid": pid})


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode())


def _report_exits(sock: socket.socket, children: set[int], exited: set[int]) -> None:
    """Report each child that ended, without reaping it (WNOWAIT): see `ForkedChild.release`."""
    for pid in sorted(children):
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
            children.discard(pid)
        if info is None:
            continue
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        children.discard(pid)
        exited.add(pid)
        _send(sock, {"exit": pid, "returncode": -info.si_status if killed else info.si_status})


def _release(pid: int, exited: set[int]) -> None:
    if pid in exited:
        exited.discard(pid)
        os.waitpid(pid, 0)


def _become_child(request: Mapping[str, Any], out_fd: int, server: int) -> None:
    """In the forked child: become the process the request describes, then run its module as
    ``__main__``; the interpreter ends as a fresh one would when it returns or raises. A failure
    before the module runs is one line in its log and exit code 1."""
    try:
        _setup_child(request, out_fd, server)
    except BaseException as err:  # noqa: BLE001 - whatever it is, the child must not serve
        with contextlib.suppress(OSError):
            os.write(2, f"smx run: cannot start {request.get('module')}: {err}\n".encode())
        os._exit(1)
    import runpy

    module, args = str(request["module"]), [str(a) for a in request["args"]]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _setup_child(request: Mapping[str, Any], out_fd: int, server: int) -> None:
    import ctypes
    import io

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the server's socket above all
    # stdout and stderr unbuffered, as PYTHONUNBUFFERED gives a fresh interpreter.
    for name in ("stdout", "stderr"):
        stream = io.TextIOWrapper(
            io.FileIO(1 if name == "stdout" else 2, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            write_through=True,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    os.chdir("/")
    env = {str(k): str(v) for k, v in dict(request["env"]).items()}
    os.environ.clear()
    os.environ.update(env)
    if request.get("drop") is not None:
        from trusted.supervisor.isolation import dropper_of

        dropper_of(request["drop"])()
    from trusted.supervisor.isolation import die_with

    alive = die_with(server)
    # A uid change without exec leaves the process non-dumpable (its /proc files root's, not
    # readable by itself): as an exec'd child is. The image holds nothing secret.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    if not alive:
        raise OSError("the fork server ended while this process started")
    os.chdir(str(request["cwd"]))
    flags = ["-" + "O" * sys.flags.optimize] if sys.flags.optimize else []
    _set_command_line([sys.executable, *flags, "-m", str(request["module"]), *request["args"]])
    # PYTHONPATH as a fresh interpreter reads it (the server's environment had none). The
    # working directory is not added (as `python -m` would): what a child leaves there is
    # never imported by a restart of it.
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = extra


def _set_command_line(argv: list[str]) -> None:
    """Show `argv` in ps and /proc/PID/cmdline instead of the server's command line: the
    kernel reads it from the process's own argument area, rewritten here in place (cut to the
    area's size, as setproctitle does)."""
    import ctypes

    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    size = end - start
    if size <= 1:
        return
    text = "\0".join(argv).encode(errors="replace")[: size - 1]
    ctypes.memmove(start, text.ljust(size, b"\0"), size)
