"""Test helpers for extension authors: a real core on a temporary socket with temporary
certificates, driven through the `smx` command (not imported), so tests of an extension talk to
exactly what runs on a site; and the waiting helpers every test needs (`until`, `wait_for`,
`point_where`, `free_port`).

    with TestSite({"battery": ("trusted", ["trusted-extension"], [])}) as site:
        ext = Extension(site.env("battery", config={"port": 7701}))
        ...
        site.stubs("admin")   # the raw API as an admin, for assertions
        site.client("admin")  # or an smx.sdk.Client (async with ...)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smx.client import Credentials, Stubs, unix_target
from smx.identity import Identity
from smx.process_env import ProcessEnv, RunPaths
from smx.sdk import Client
from smx.toml_text import toml_list
from smx.v1 import point_service_pb2 as spb

__all__ = ["TestSite", "free_port", "point_where", "smx_command", "until", "wait_for"]

SITE = "test-site"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a device simulator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05, what: str = ""
) -> Any:
    """The first truthy value of `predicate()` (a function or a coroutine function); an
    exception counts as "not yet" (a point not declared yet, a core still starting). Fails the
    test after `timeout` seconds, showing the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
        except Exception as err:  # noqa: BLE001 - not there yet
            last = err
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met in {timeout:g} s (last: {last!r})")
        await asyncio.sleep(step)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.1, what: str = ""
) -> Any:
    """`until` for code without an event loop (tests that drive processes)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as err:  # noqa: BLE001 - not there yet
            last = err
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met in {timeout:g} s (last: {last!r})")
        time.sleep(step)


async def point_where(
    site: TestSite, name: str, check: Callable[[Any], Any], timeout: float = 10.0
) -> Any:
    """The point `name` (an `smx.v1.Point`, read as admin) once `check(point)` holds."""

    stubs = site.stubs("admin")

    async def probe() -> Any:
        resp = await stubs.points.GetPoints(spb.GetPointsRequest(names=[name]))
        point = resp.points[0] if resp.points else None
        return point if point is not None and check(point) else None

    return await until(probe, timeout, what=f"{name} as expected")


# The `smx` program run once per command of a batch, in one interpreter (TestSite.smx_batch);
# the first command that fails stops the batch with its exit code.
_SMX_BATCH = """
import json, sys
from trusted.cli.main import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        print("smx " + " ".join(argv[2:]) + f" exited with {code}", file=sys.stderr)
        sys.exit(code)
"""


def smx_command() -> list[str]:
    """The `smx` console script, or the module when running from a source checkout."""
    exe = shutil.which("smx")
    return [exe] if exe else [sys.executable, "-m", "trusted.cli.main"]


class TestSite:
    """A temporary site: CA, a certificate and policy binding per client, and a core process.

    `clients` maps a client name to (domain, roles, extra read patterns). An `admin` client is
    always added. Use as a context manager, or call `start()` / `close()`.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        clients: dict[str, tuple[str, list[str], list[str]]],
        *,
        flush_interval: str = "200ms",
        core_toml: str = "",
    ) -> None:
        self.clients = {"admin": ("trusted", ["admin"], []), **clients}
        self.home = Path(tempfile.mkdtemp(prefix="smx-t-"))  # short: socket paths max 108 B
        self.flush_interval = flush_interval
        self.core_toml = core_toml  # appended to core.toml, e.g. 'tcp = "127.0.0.1:7443"'
        self.core: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- set-up ---------------------------------------------------------------------------------

    def smx(self, *args: str) -> str:
        r = subprocess.run(
            [*smx_command(), "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"smx {' '.join(args)} failed: {r.stdout}{r.stderr}")
        return r.stdout

    def smx_batch(self, commands: list[list[str]]) -> None:
        """Run several `smx` commands in order in one interpreter: the same commands, without
        paying Python's and the CLI's start-up once per command (most of a test site's set-up
        time, and of a test run's CPU, when every test makes its own site)."""
        argvs = [["--home", str(self.home), *args] for args in commands]
        r = subprocess.run(
            [sys.executable, "-c", _SMX_BATCH, json.dumps(argvs)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"smx set-up failed: {r.stdout}{r.stderr}")

    def provision(self) -> None:
        commands = [["pki", "init", "--site", SITE], ["policy", "init", "--force"]]
        for name, (domain, roles, reads) in self.clients.items():
            if name != "admin":
                commands.append(["pki", "issue", name, "--domain", domain])
            else:
                commands.append(["pki", "issue", "admin", "--domain", "trusted"])
            if roles and name != "admin":
                extra = [a for r in reads for a in ("--read", r)]
                commands.append(["policy", "bind", name, *roles, "--domain", domain, *extra])
        self.smx_batch(commands)
        # A dotted key, not a [history] table: appended top-level keys (`tcp = ...`) stay
        # top-level.
        (self.home / "core.toml").write_text(
            f'history.flush_interval = "{self.flush_interval}"\n{self.core_toml}\n'
        )

    def bind_extension(self, name: str, devices: Sequence[str]) -> None:
        """Bind `name` as `smx run` binds an extension with these `devices` (after `provision`,
        for a client given no roles): its role, and read, write and control on each device
        but its own."""
        others = toml_list([f"{d}/**" for d in devices if d != name])
        with open(self.home / "policy.toml", "a") as f:
            f.write(
                f'\n[[bindings]]\nidentity = "{Identity(SITE, "trusted", name).uri}"\n'
                'roles = ["trusted-extension"]\n'
                f'rules = [ {{ verbs = ["read", "write", "control"], points = {others} }} ]\n'
            )

    def start(self) -> TestSite:
        if not (self.home / "pki").exists():
            self.provision()
        self._log = open(self.home / "core.log", "ab")  # noqa: SIM115 - closed in stop_core
        self.core = subprocess.Popen(
            [*smx_command(), "--home", str(self.home), "core"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.core is not None
            if self.core.poll() is not None:
                raise RuntimeError(f"core exited:\n{(self.home / 'core.log').read_text()}")
            if "smxcore ready" in (self.home / "core.log").read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"core not ready after {timeout} s")

    def stop_core(self, sig: int = signal.SIGTERM) -> None:
        if self.core is not None and self.core.poll() is None:
            self.core.send_signal(sig)
            self.core.wait(15)
        if self._log is not None:
            self._log.close()
            self._log = None
        # The "ready" line of the previous run must not satisfy the next wait_ready.
        log = self.home / "core.log"
        if log.exists():
            log.rename(self.home / f"core.{int(time.time() * 1000)}.log")

    def restart_core(self) -> None:
        self.stop_core()
        self.start()

    def close(self) -> None:
        self.stop_core()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> TestSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients --------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        return unix_target(RunPaths(self.home).socket)

    def credentials(self, name: str) -> Credentials:
        return Credentials.from_site(self.home, name)

    def env(
        self, name: str, config: dict[str, Any] | None = None, devices: tuple[str, ...] = ()
    ) -> ProcessEnv:
        """What the supervisor would give process `name` (its config written to its config
        file, as the supervisor does), for running it in-process."""
        paths = RunPaths(self.home)
        paths.run.mkdir(exist_ok=True)
        config_file = paths.config_file(name)
        config_file.write_text(json.dumps(config or {}))
        return ProcessEnv(
            name=name,
            target=self.target,
            credentials=self.credentials(name),
            site=SITE,
            domain=self.clients[name][0],
            devices=devices or (name,),
            home=self.home,
            config_file=config_file,
            health_file=paths.health_file(name),
        )

    def environ(self, name: str, config: dict[str, Any] | None = None) -> dict[str, str]:
        """The same as environment variables, for running the process as a process."""
        return {**os.environ, **self.env(name, config).to_environ()}

    def client(self, name: str) -> Client:
        """An SDK client with `name`'s certificate: `async with site.client("admin") as c:`."""
        return Client(self.target, self.credentials(name))

    def stubs(self, name: str) -> Stubs:
        return Stubs(self.credentials(name).aio_channel(self.target))

    def sync_stubs(self, name: str) -> Stubs:
        return Stubs(self.credentials(name).channel(self.target))
