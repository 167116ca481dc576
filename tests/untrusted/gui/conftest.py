"""Fixtures of the GUI tests: a real core (TestSite) with two device owners and the GUI's
certificate (the `gui` role), and the GUI run as its own process, as the supervisor runs it."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from extensions.sdk.testing import TestSite, free_port, wait_for
from smx.sdk import PointSpec
from smx.timestamps import seconds_to_ts
from smx.v1 import point_pb2
from smx.values import to_value
from untrusted.gui.passwords import hash_password

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "correct horse battery"
# A cheap hash for tests: the real cost is for a site's login, not for every test.
PASSWORD_HASH = hash_password(PASSWORD, n=2**10)


@pytest.fixture(scope="session")
def site() -> Iterator[TestSite]:
    with TestSite(
        {
            "smm": ("trusted", ["trusted-extension"], []),
            "ess": ("trusted", ["trusted-extension"], []),
            "pv": ("trusted", ["trusted-extension"], []),
            "gui": ("untrusted", ["gui"], []),
        }
    ) as s:
        yield s


class GuiProcess:
    """`python -m untrusted.gui` with the environment the supervisor would give it."""

    def __init__(self, site: TestSite, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.config = {"listen": f"127.0.0.1:{self.port}", **config}
        self.log = site.home / f"gui-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "untrusted.gui"],
                env={**site.environ("gui", self.config), "PYTHONPATH": str(ROOT)},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._serving, what=f"the GUI serving on {self.port}: {self.output()}")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the GUI exited: {self.output()}")
        return "serving the GUI" in self.output()

    def get(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def gui_process(site: TestSite, **config: Any) -> Iterator[GuiProcess]:
    gui = GuiProcess(site, config)
    try:
        yield gui
    finally:
        gui.stop()


def run_gui_expecting_failure(site: TestSite, config: dict[str, Any]) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "untrusted.gui"],
        env={**site.environ("gui", config), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, r.stdout + r.stderr


def sample(name: str, value: Any, t: float, quality: str = "GOOD") -> point_pb2.PointSample:
    return point_pb2.PointSample(
        name=name,
        value=to_value(value),
        source_time=seconds_to_ts(t),
        quality=getattr(point_pb2, f"QUALITY_{quality}"),
    )


UNITS = {"P": "W", "SoC": "%"}


async def write(
    site: TestSite, writer: str, values: dict[str, Any], period: float | None = None
) -> None:
    """Write points as their owner would (declared with a unit and, for STALE, a period)."""
    async with site.client(writer) as c:
        c.declare(
            PointSpec(
                n,
                unit=UNITS.get(n.rsplit("/", 1)[-1], ""),
                kind="string" if isinstance(values[n], str) else None,
                period=period,
            )
            for n in values
        )
        for name, value in values.items():
            c.publish_sample(sample(name, value, time.time()))


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gui test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "gui.crt", folder / "gui.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
