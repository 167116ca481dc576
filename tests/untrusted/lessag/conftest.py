"""Fixtures of the lessag tests: a real core (TestSite) with a meter writer, a battery owner and
lessag's certificate; a real Mosquitto per test; the agent run in-process."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from extensions.sdk.testing import TestSite
from smx.sdk import PointSpec
from smx.timestamps import seconds_to_ts
from smx.v1 import point_pb2
from smx.values import to_value
from tests.untrusted.lessag.broker import Mosquitto, mosquitto_available
from untrusted.lessag import Lessag

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")


@pytest.fixture(scope="session")  # one core for every lessag test: a core costs ~5 s
def site():
    with TestSite(
        {
            "smm": ("trusted", ["trusted-extension"], []),
            "ess": ("trusted", ["trusted-extension"], []),
            "ev1": ("trusted", ["trusted-extension"], []),
            "lessag": ("untrusted", ["untrusted-agent"], []),
            "narrow": ("untrusted", [], []),  # bound by a test with exactly what it needs
        }
    ) as s:
        yield s


@pytest.fixture
def tmp() -> Any:
    with tempfile.TemporaryDirectory(prefix="lessag-") as d:
        yield Path(d)


@pytest.fixture
def broker(tmp: Path):
    with Mosquitto(tmp / "broker") as b:
        yield b


def sample(name: str, value: Any, t: float, quality: str = "GOOD") -> point_pb2.PointSample:
    return point_pb2.PointSample(
        name=name,
        value=to_value(value),
        source_time=seconds_to_ts(t),
        quality=getattr(point_pb2, f"QUALITY_{quality}"),
    )


async def write(site: TestSite, writer: str, samples: list[point_pb2.PointSample]) -> None:
    async with site.client(writer) as c:
        c.declare(
            PointSpec(s.name, unit=UNITS.get(s.name.rsplit("/", 1)[-1], ""), kind=None)
            for s in samples
        )
        for s in samples:
            c.publish_sample(s)


UNITS = {"P": "W", "U1": "V", "I1": "A", "f": "Hz", "Ap": "kWh", "SoC": "%", "P1": "W"}


def agent_config(broker: Mosquitto, tmp: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "mqtt": {"port": broker.port, "prefix": "usm-t/lessag", "backoff_max": 2},
        "publish_every": "200ms",
        "devices": [{"id": "smm", "type": "SMM"}],
        "queue": {"path": str(tmp / "queue.db"), "flush_every": "200ms"},
        "ess": {"enabled": False},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@contextlib.asynccontextmanager
async def running(
    site: TestSite, config: dict[str, Any], name: str = "lessag", **kw: Any
) -> AsyncIterator[Lessag]:
    agent = Lessag(site.env(name, config), **kw)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
