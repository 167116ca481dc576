"""The site supervisor behind ``smx run``: provision the site, start the core and every
extension, agent and simulator as its own OS process, restart what crashes, stop everything in
order.

Start: provision (trusted.supervisor.provision: CA, certificates, policy.toml, core.toml, config
files), start the simulators, start the core and wait until it is healthy
(within ``health_timeout``, else ``smx run`` fails), then start the extensions and the
agents. A process that exits when not asked to, even with code 0, is restarted after a back-off
of ``backoff_initial``, doubled at every crash up to ``backoff_max``, and reset once the process
ran healthy for ``stable_after``. The core is restarted the same way; the clients stay up and
reconnect by themselves. SIGTERM, SIGINT or SIGHUP stop the site: extensions and agents first,
then simulators, the core last; each gets SIGTERM and, after ``stop_timeout``, SIGKILL.

The process contract (environment, working directory, health file, logs, signals) is
specified in docs/SITE.md and defined in code once, in smx.process_env and smx.health: the
supervisor writes the environment with ``ProcessEnv.to_environ`` and reads health files with
``read_health_file``. Health as ``smx status`` shows it: see trusted.supervisor.status.

The core is healthy when its health file (written like every process's) is fresh and says
``running``, and a TLS handshake on its socket with the supervisor's own certificate succeeds and
the core answers it in HTTP/2 (`_handshake`): the socket, the credentials and the core's
acceptance of this client, checked with the standard library only. gRPC is not imported here:
it would cost the supervisor, which runs for months, some 9 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import grp
import json
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from smx.client import Credentials, unix_target
from smx.health import WRITE_PERIOD_S, read_health_file
from smx.heap import memory_trimmer
from smx.identity import SERVER_NAME
from smx.process_env import ENV_HEALTH_FILE, ProcessEnv, simulator_environ
from trusted.supervisor import isolation, strays
from trusted.supervisor.fork_server import ForkServer, SpawnRequest
from trusted.supervisor.process import ManagedProcess, kill_user, signal_group
from trusted.supervisor.site_config import (
    OPTIMIZE_FLAGS,
    PYTHON_FLAGS,
    ProcessSpec,
    SiteConfig,
)
from trusted.supervisor.status import (
    STATUS_HEARTBEAT_S,
    STATUS_VERSION,
    SUPERVISOR_NAME,
    ProvisionError,
    pid_alive,
    printable,
    read_status,
    write_json_atomic,
)

__all__ = ["STATUS_INTERVAL", "Supervisor", "SupervisorError"]

log = logging.getLogger(__name__)

STATUS_INTERVAL = 2.0
# What its status rounds left goes back to the system this often: the reference cycles they make
# (a full collection, ~4 ms), then the C heap (smx/heap.py, ~0.06 ms). Left to Python's own
# schedule, its PSS rose ~1.2 MiB a minute between full collections, 17 to 20 MiB
# (docs/PERFORMANCE.md, run 15).
TRIM_INTERVAL_S = 10.0
# supervisor.json is rewritten on every change, else every STATUS_HEARTBEAT_S (an SD card pays a
# block and a journal commit per rewrite); `smx status` computes uptimes itself.
PROVISION_TIMEOUT = 120.0  # users, certificates and ownership of a site: seconds, not minutes
# The directory holding the `trusted` package: children find `extensions.*` there.
_ROOT = Path(__file__).resolve().parents[2]
# The TLS handshake with the core, once up: its health file is read at every refresh, a
# handshake (a connection, a key exchange, a certificate check on both sides) costs more.
HANDSHAKE_PERIOD = WRITE_PERIOD_S
HANDSHAKE_TIMEOUT = 2.0
# What an HTTP/2 client sends first (RFC 9113, 3.4): the preface and an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


# A fork server costs ~12-14 MiB PSS and saves ~7 per process forked from it (docs/PERFORMANCE.md,
# run 13): two processes about break even, for a memory layout they would then share.
FORK_FROM = 3


class SupervisorError(Exception):
    """The site cannot be run: another supervisor holds it, or the core did not come up."""


def _base_env() -> dict[str, str]:
    # Not PYTHONOPTIMIZE (deploy/systemd gives it to smx run): PYTHON_FLAGS says which children
    # run with -OO, and a simulator must not (the demo's print their docstrings).
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SMX_") and k != "PYTHONOPTIMIZE"
    }
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + path if path else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Supervisor:
    """Runs one site until :meth:`request_stop` (or a signal); see the module docstring."""

    def __init__(
        self,
        cfg: SiteConfig,
        *,
        python: str = sys.executable,
        status_interval: float = STATUS_INTERVAL,
        reap_strays: bool = False,
    ) -> None:
        """``reap_strays``: this process exists to run the site (``smx run``, ``smx demo``), so
        it may adopt and kill processes that escaped their group (trusted.supervisor.strays);
        not for a supervisor embedded in a process that has children of its own."""
        self.cfg = cfg
        self.paths = cfg.paths
        self.python = python
        self.status_interval = status_interval
        self.state = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        try:
            self._created: float | None = psutil.Process().create_time()
        except psutil.Error:
            self._created = None
        self.core: ManagedProcess | None = None
        self.simulators: list[ManagedProcess] = []
        self.clients: list[ManagedProcess] = []
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None
        self._write_pending = False
        self._status_written = 0.0  # time.monotonic() of the last supervisor.json write
        self._tls: ssl.SSLContext | None = None  # the supervisor's client side, for the core
        # The last handshake with the core: the core's pid, time.monotonic(), its outcome.
        self._handshake_at: tuple[int | None, float, bool] = (None, 0.0, False)
        # OS isolation of the children (trusted.supervisor.isolation): as root only.
        self.isolated = isolation.isolation_wanted()
        self._accounts: dict[str, isolation.Account] = {}
        # One fork server per trust domain with FORK_FROM or more Python clients (supervisor.
        # fork_server), under isolation: never shared between domains.
        self.fork_servers: dict[str, ForkServer] = {}
        self.reap_strays = reap_strays and strays.become_subreaper()

    # --- public

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping site %s", self.cfg.site)
        self._stop.set()

    @property
    def processes(self) -> list[ManagedProcess]:
        core = [self.core] if self.core is not None else []
        return core + self.clients + self.simulators

    async def run(self) -> None:
        """Run the site until asked to stop; raises SupervisorError if it cannot start."""
        self._take_lock()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        refresher: asyncio.Task[None] | None = None
        try:
            await self._reap_orphans()
            await self._kill_leftover_users()
            self._build(await self._provision())
            self._write_status()
            refresher = asyncio.create_task(self._refresh_loop(), name="supervisor-status")
            for p in self.simulators:
                p.start()
            await self._start_core()
            if not self._stop.is_set():
                for p in self.clients:
                    if p.state != "failed":
                        p.start()
                self.state = "running"
                self._changed()
                log.info(
                    "site %s running: core, %d clients, %d simulators",
                    self.cfg.site,
                    len(self.clients),
                    len(self.simulators),
                )
            await self._stop.wait()
        except BaseException as err:
            if not self._stop.is_set():  # a stop asked for during start-up is no failure
                self.state = "failed"
                self.error = str(err) or repr(err)
            raise
        finally:
            await self._shutdown()  # each process's user emptied as it ended (ManagedProcess)
            self._sweep_strays(everything=True)  # what else was adopted
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            self._write_status()
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._release_lock()

    # --- start

    async def _provision(self) -> dict[str, str]:
        """Provision in a child process (trusted.supervisor.provision): the supervisor runs for
        months and should neither hold the CA key nor carry cryptography's memory. Returns the
        processes that must not start, with the reason."""
        if not self.isolated:
            log.warning(
                "ISOLATION IS OFF: `smx run` is not root, so every extension, agent and "
                "simulator runs as uid %d with the supervisor's rights (docs/SITE.md, Isolation)",
                os.getuid(),
            )
            if self.cfg.supervisor.core_nice:
                log.info(
                    "supervisor.core_nice = %d not applied: the core's CPU priority is set with "
                    "its privilege drop, as root only",
                    self.cfg.supervisor.core_nice,
                )
        child = await asyncio.create_subprocess_exec(
            self.python,
            "-P",  # root must not import a module from whatever directory smx run started in
            "-m",
            "trusted.supervisor.provision",
            str(self.cfg.source),
            *(["--isolate"] if self.isolated else []),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_base_env(),
        )
        try:
            async with asyncio.timeout(PROVISION_TIMEOUT):
                out, err = await child.communicate()
        except TimeoutError:
            child.kill()
            await child.wait()
            raise ProvisionError(
                f"provisioning took over {PROVISION_TIMEOUT:g}s and was stopped (a directory of "
                "the site that a process keeps changing?)"
            ) from None
        if child.returncode != 0:
            text = err.decode(errors="replace").strip()
            raise ProvisionError(text.splitlines()[-1] if text else f"exit {child.returncode}")
        # Provisioning's own warnings (e.g. site.toml made private) are the operator's to see.
        for line in err.decode(errors="replace").splitlines():
            if line.strip():
                log.warning("provisioning: %s", printable(line.strip()))
        result = json.loads(out)
        if result["issued"]:
            log.info("issued certificates: %s", ", ".join(result["issued"]))
        return dict(result["refused"])

    def _take_lock(self) -> None:
        try:
            self.paths.run.mkdir(parents=True, exist_ok=True)
            # The supervisor's alone: a child that could open it could hold the lock and keep
            # the site from ever starting again.
            fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as err:
            raise SupervisorError(
                f"cannot create {self.paths.lock}: {err.strerror or err}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SupervisorError(
                f"another supervisor (pid {other}) is running the site in {self.cfg.home}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _reap_orphans(self) -> None:
        """Stop processes a previous supervisor left behind when it was killed (SIGKILL, power
        loss of the terminal): a stale core would hold the socket."""
        old = read_status(self.paths.status)
        if old is None:
            return
        pids = [
            p["pid"]
            for p in old["processes"]
            if isinstance(p, dict) and pid_alive(p.get("pid"), p.get("pid_created"))
        ]
        if not pids:
            return
        log.warning("stopping %d processes left by a previous supervisor: %s", len(pids), pids)
        for pid in pids:
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.supervisor.stop_timeout
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
            await asyncio.sleep(0.05)
        for pid in pids:
            signal_group(pid, signal.SIGKILL)

    async def _kill_leftover_users(self) -> None:
        """Isolated: nothing may run as a user of this site before provisioning, which walks
        directories those users own (a process left by a killed supervisor could race it)."""
        if not self.isolated:
            return
        names = [s.name for s in self.cfg.processes]
        try:
            accounts = isolation.lookup_accounts(self.cfg.site, self.cfg.home, [])
        except KeyError:
            return  # the site's users do not exist yet: nothing of theirs can run
        for name in names:
            with contextlib.suppress(KeyError):
                accounts |= isolation.lookup_accounts(self.cfg.site, self.cfg.home, [name])
        reaper = accounts.pop(isolation.REAPER)
        for name, account in accounts.items():
            await kill_user(name, isolation.kill_all_argv(self.python, account, reaper))

    def _health_file(self, name: str) -> Path:
        # Isolated, a client cannot write in run/: its heartbeat lives in its private directory,
        # or in its own directory in memory (run/<name>.health.json is a link to it, made by
        # provisioning).
        if self.paths.volatile is not None:
            return self.paths.volatile_dir(name) / "health.json"
        if self.isolated:
            return isolation.private_dir_of(self.cfg.home, name) / "health.json"
        return self.paths.health_file(name)

    def _reach(self) -> list[Path]:
        """What an isolated child must reach: its interpreter, the code, the site."""
        return [
            Path(os.path.realpath(self.python)),
            Path(sys.base_prefix),
            Path(sys.prefix),
            _ROOT,
            self.cfg.home.parent,
            *([] if self.paths.volatile is None else [self.paths.volatile]),
        ]

    def _isolation_kwargs(self, name: str, env: dict[str, str], nice: int = 0) -> dict[str, Any]:
        """Working directory, environment, privilege drop and CPU priority of child ``name``."""
        if not self.isolated:
            return {"env": env, "cwd": self.cfg.home}
        env = dict(env)
        # Modules next to site.toml were found through the working directory (the home).
        env["PYTHONPATH"] = os.pathsep.join([str(self.cfg.home), env["PYTHONPATH"]])
        reach = self._reach()
        return {
            "env": isolation.minimal_environ(env),
            "cwd": Path("/"),  # the wrapper enters run/<name>/ only once it is not root
            **({"nice": nice} if nice else {}),  # what the wrapper sets, checked once it runs
            "wrap": lambda argv: isolation.exec_argv(
                self.python,
                self._accounts[name],
                reach,
                argv,
                isolation.private_dir_of(self.cfg.home, name),
                nice,
            ),
            "kill_user": isolation.kill_all_argv(
                self.python, self._accounts[name], self._accounts[isolation.REAPER]
            ),
        }

    def _fork_of(
        self, spec: ProcessSpec, env: dict[str, str]
    ) -> tuple[ForkServer, SpawnRequest] | None:
        """The fork server and request that start ``spec``, if it is forked (see `_build`)."""
        server = self.fork_servers.get(spec.domain or "")  # only under isolation
        if server is None or spec.module is None:
            return None
        drop = isolation.drop_spec(self._accounts[spec.name], self._reach())
        cwd = isolation.private_dir_of(self.cfg.home, spec.name)
        return server, SpawnRequest(spec.module, (), env, str(cwd), drop)

    def _process(self, spec: ProcessSpec, env: dict[str, str]) -> ManagedProcess:
        health = self._health_file(spec.name) if spec.domain else None
        kwargs = self._isolation_kwargs(spec.name, env)
        return ManagedProcess(
            spec.name,
            spec.kind,
            spec.argv(self.python),
            log_path=self.paths.log_file(spec.name),
            settings=self.cfg.supervisor,
            on_change=self._changed,
            health_file=health,
            fork=self._fork_of(spec, kwargs["env"]),
            **kwargs,
        )

    def _build(self, refused: dict[str, str]) -> None:
        cfg, base = self.cfg, _base_env()
        ca, clients = cfg.core.pki_dir / "ca.crt", cfg.core.pki_dir / "clients"

        def client_credentials(name: str) -> Credentials:
            return Credentials(ca, clients / f"{name}.crt", clients / f"{name}.key")

        if self.isolated:
            self._accounts = isolation.lookup_accounts(
                cfg.site, cfg.home, [s.name for s in cfg.processes if s.enabled]
            )
            for spec in cfg.processes:  # site.toml's os_groups, e.g. dialout for a serial port
                if spec.enabled and spec.os_groups:
                    acc = self._accounts[spec.name]
                    extra = tuple(grp.getgrnam(g).gr_gid for g in spec.os_groups)
                    self._accounts[spec.name] = isolation.Account(
                        acc.uid, acc.gid, acc.groups + extra
                    )
        if cfg.supervisor.fork_server and self.isolated:
            # Not without isolation: a stray is then known by the SMX_NAME in
            # /proc/PID/environ, which in a forked process is the server's.
            domains = [spec.domain for spec in cfg.clients if spec.module is not None]
            forked = {d for d in domains if d is not None and domains.count(d) >= FORK_FROM}
            for domain in sorted(forked):
                self.fork_servers[domain] = ForkServer(
                    f"fork-server-{domain}", self.python, OPTIMIZE_FLAGS
                )
        core_health = self._health_file("core")
        self.core = ManagedProcess(
            "core",
            "core",
            [self.python, *PYTHON_FLAGS, "-m", "trusted.cli.main", "--home", str(cfg.home), "core"],
            **self._isolation_kwargs(
                "core", base | {ENV_HEALTH_FILE: str(core_health)}, cfg.supervisor.core_nice
            ),
            log_path=self.paths.log_file("core"),
            settings=cfg.supervisor,
            on_change=self._changed,
            health_file=core_health,
        )
        for spec in cfg.of_kind("simulator"):
            env = base | simulator_environ(spec.name, self.paths.config_file(spec.name))
            self.simulators.append(self._process(spec, env))
        for spec in cfg.clients:
            assert spec.domain is not None
            process_env = ProcessEnv(
                name=spec.name,
                target=unix_target(cfg.core.socket),
                credentials=client_credentials(spec.name),
                site=cfg.site,
                domain=spec.domain,
                devices=tuple(spec.devices),
                config_file=self.paths.config_file(spec.name),
                health_file=self._health_file(spec.name),
            )
            proc = self._process(spec, base | process_env.to_environ())
            if spec.name in refused:
                proc.fail(refused[spec.name])
            self.clients.append(proc)
        self._tls = _client_tls(client_credentials(SUPERVISOR_NAME))

    async def _start_core(self) -> None:
        core = self.core
        assert core is not None
        core.restart_on_crash = False  # a core that cannot start fails `smx run` at once
        core.start()
        timeout = self.cfg.supervisor.health_timeout
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            if core.state == "failed":
                raise SupervisorError(
                    f"the core exited during start-up ({core.last_exit}): {core.last_error} "
                    f"(log: {core.log_path})"
                )
            if core.alive and (await self._check_core(handshake=True))[1]:
                core.set_health("serving", True)
                core.restart_on_crash = True
                log.info("core healthy after %.2fs", timeout - (deadline - time.monotonic()))
                return
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"the core did not answer its health check within {timeout:g}s "
                    f"(log: {core.log_path})"
                )
            await asyncio.sleep(0.05)

    async def _check_core(self, *, handshake: bool = False) -> tuple[str, bool, str]:
        """The core's health as `smx status` shows it, whether that is healthy, and the error:
        its health file first (fresh and ``running``), then a handshake on its socket, at most
        every `HANDSHAKE_PERIOD` unless ``handshake`` (or the core is another process)."""
        core = self.core
        if core is None or core.health_file is None or self._tls is None:
            return "unreachable", False, ""
        rep = read_health_file(core.health_file)
        if rep is None or not rep.fresh():
            return "no heartbeat", False, ""
        if rep.state != "running":
            return rep.state, False, rep.last_error
        pid, at, ok = self._handshake_at
        now = time.monotonic()
        if handshake or pid != core.pid or now - at >= HANDSHAKE_PERIOD:
            ok = await _handshake(self._tls, self.cfg.core.socket)
            self._handshake_at = (core.pid, now, ok)
        return ("serving", True, "") if ok else ("unreachable", False, "")

    # --- running

    async def _refresh_loop(self) -> None:
        last = trimmed = time.monotonic()
        trim = memory_trimmer()
        while True:
            await asyncio.sleep(min(0.5, self.status_interval))
            # Look more often while something is starting, so `smx status` shows it up soon.
            starting = any(p.state == "starting" for p in self.processes)
            if starting or time.monotonic() - last >= self.status_interval:
                last = time.monotonic()
                await self._refresh_health()
                self._sweep_strays()
                if time.monotonic() - self._status_written >= STATUS_HEARTBEAT_S:
                    self._write_status()
                if last - trimmed >= TRIM_INTERVAL_S:
                    trimmed = last
                    gc.collect()
                    trim()

    async def _refresh_health(self) -> None:
        core = self.core
        if core is not None and core.alive:
            core.set_health(*await self._check_core())
        now = time.time()
        for p in self.clients + self.simulators:
            if not p.alive:
                continue
            if p.health_file is None:
                p.set_health("-", True)
                continue
            rep = read_health_file(p.health_file)
            if rep is None or not rep.fresh(now):
                p.set_health("no heartbeat", False)
            else:
                # "degraded" (e.g. one dead meter) is a process doing its job: it counts as
                # healthy for the restart back-off, or it would wait backoff_max forever.
                p.set_health(rep.state, rep.healthy, rep.last_error)

    def _sweep_strays(self, *, everything: bool = False) -> None:
        servers = list(self.fork_servers.values())
        if not self.reap_strays or any(p.spawning for p in self.processes + servers):
            return
        own = {p.pid for p in self.processes + servers if p.pid is not None}
        own |= {p.helper_pid for p in self.processes if p.helper_pid is not None}
        running = {p.name for p in self.processes if p.alive}
        # Isolated, a stray is known by its user (it cannot change it); else by the SMX_NAME it
        # inherited, which it could change.
        users = {acc.uid: name for name, acc in self._accounts.items()} if self.isolated else None
        strays.sweep(own, running, everything=everything, users=users)

    def _changed(self) -> None:
        # Coalesce the changes of one loop iteration into one write.
        if not self._write_pending:
            self._write_pending = True
            asyncio.get_running_loop().call_soon(self._write_status)

    def _write_status(self) -> None:
        self._write_pending = False
        self._status_written = time.monotonic()
        data = {
            "version": STATUS_VERSION,
            "site": self.cfg.site,
            "home": str(self.cfg.home),
            "config": str(self.cfg.source),
            "pid": os.getpid(),
            "pid_created": self._created,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "state": self.state,
            "error": self.error,
            "processes": [p.to_json() for p in self.processes],
            "fork_servers": [s.to_json() for s in self.fork_servers.values() if s.pid],
        }
        path = self.paths.status_file
        if path != self.paths.status and not path.parent.is_dir():
            # The directory in memory was never made (provisioning failed): `smx status` must
            # still see why, so the file goes where it reads (the next start links it again).
            path = self.paths.status
        try:
            write_json_atomic(path, data)
        except OSError as err:
            log.error("cannot write %s: %s", path, err.strerror or err)

    # --- stop

    async def _shutdown(self) -> None:
        if self.state != "failed":
            self.state = "stopping"
        self._changed()
        await asyncio.gather(*(p.stop() for p in self.clients))
        await asyncio.gather(*(p.stop() for p in self.simulators))
        await asyncio.gather(*(s.close() for s in self.fork_servers.values()))
        if self.core is not None:
            await self.core.stop()
        if self.state != "failed":
            self.state = "stopped"
        log.info("site %s stopped", self.cfg.site)


def _client_tls(creds: Credentials) -> ssl.SSLContext:
    """The supervisor's TLS client side towards the core: its own certificate, the site CA, the
    core's server name, HTTP/2 (gRPC) offered."""
    creds.check()
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(creds.ca))
    ctx.load_cert_chain(str(creds.cert), str(creds.key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def _handshake(tls: ssl.SSLContext, socket_path: Path) -> bool:
    """True when the core accepts a TLS connection from this client on its socket and answers
    in HTTP/2. In TLS 1.3 the server checks the client's certificate after the client has
    finished its handshake: a refusal arrives as an alert instead of the server's first frame,
    so the check reads that frame (SETTINGS) before it counts the core as up."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(
                str(socket_path), ssl=tls, server_hostname=SERVER_NAME
            )
            tls_object = writer.get_extra_info("ssl_object")
            if tls_object is None or tls_object.selected_alpn_protocol() != "h2":
                return False
            writer.write(_H2_PREFACE)
            await writer.drain()
            frame = await reader.readexactly(9)  # length (3), type (1), flags (1), stream (4)
            return frame[3] == _H2_SETTINGS
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as err:
        log.debug("TLS handshake with the core on %s failed: %s", socket_path, err)
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    await writer.wait_closed()
