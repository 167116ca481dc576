"""A real site for tests: temporary CA, one certificate per client, policy, and a real core
serving on a Unix socket with mTLS (in this process, or as a separate `smx core` process)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smx.client import Credentials, Stubs, unix_target
from trusted.core.config import CoreConfig, load_core_config
from trusted.pki import SiteCA
from trusted.policy import default_policy_text

__all__ = ["SITE", "DEFAULT_CLIENTS", "Site", "CoreProcess"]

SITE = "test-site"
ROOT = Path(__file__).resolve().parents[2]

# name -> (domain, roles, extra read patterns): one client per default role.
DEFAULT_CLIENTS: dict[str, tuple[str, list[str], list[str]]] = {
    "admin": ("trusted", ["admin"], []),
    "meter": ("trusted", ["trusted-extension"], []),
    "ess": ("trusted", ["trusted-extension"], ["meter/P"]),
    "lessag": ("untrusted", ["untrusted-agent"], []),
    "gui": ("trusted", ["gui"], []),
    "er": ("trusted", ["energy-router"], []),
    "nobody": ("trusted", [], []),  # has a valid certificate but no binding: default deny
}


class Site:
    """A temporary site directory. Short path: Unix socket paths are limited to 108 bytes."""

    def __init__(self, clients: dict[str, tuple[str, list[str], list[str]]] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="smx-"))
        self.clients = clients or DEFAULT_CLIENTS
        self.ca = SiteCA.init(self.home / "pki", SITE)
        for name, (domain, _, _) in self.clients.items():
            self.ca.issue(name, domain)
        self.write_policy()

    def write_policy(self, extra_bindings: list[tuple[str, list[str]]] = ()) -> None:
        bindings = [(f"{d}/{n}", roles) for n, (d, roles, _) in self.clients.items() if roles]
        bindings += list(extra_bindings)
        extra = {
            f"{d}/{n}": [(["read"], reads)] for n, (d, _, reads) in self.clients.items() if reads
        }
        (self.home / "policy.toml").write_text(
            default_policy_text(SITE, bindings, extra_rules=extra)
        )

    def config(self, **overrides: object) -> CoreConfig:
        config = load_core_config(None, home=self.home)
        history = dataclasses.replace(config.history, flush_interval=0.2)
        return dataclasses.replace(config, history=history, **overrides)

    @property
    def socket(self) -> Path:
        return self.home / "core.sock"

    @property
    def target(self) -> str:
        return unix_target(self.socket)

    def creds(self, name: str) -> Credentials:
        return Credentials.from_site(self.home, name)

    def stubs(self, name: str) -> Stubs:
        """Async stubs (grpc.aio) for a client of this site."""
        return Stubs(self.creds(name).aio_channel(self.target))

    def sync_stubs(self, name: str) -> Stubs:
        return Stubs(self.creds(name).channel(self.target))

    def cleanup(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


class CoreProcess:
    """`smx core` as its own OS process, for restart and kill -9 tests. Every instance is
    registered in `running`, so that conftest can stop what a failing test left running."""

    running: list[CoreProcess] = []

    def __init__(self, site: Site, flush_interval: str = "200ms") -> None:
        self.site = site
        (site.home / "core.toml").write_text(f'[history]\nflush_interval = "{flush_interval}"\n')
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log = open(site.home / "core.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trusted.cli.main",
                "--home",
                str(site.home),
                "core",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        CoreProcess.running.append(self)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"core exited: {(self.site.home / 'core.log').read_text()}")
            if self.site.socket.exists():
                with self.site.creds("admin").channel(self.site.target) as ch:
                    try:
                        resp = health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                    except grpc.RpcError:
                        pass
            time.sleep(0.05)
        raise TimeoutError("core did not become healthy")

    def kill(self, sig: int = 9) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.log.close()
        if self in CoreProcess.running:
            CoreProcess.running.remove(self)
