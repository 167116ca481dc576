"""docs/EXTENSIONS.md cannot rot: every ```python block of the guide is loaded as the module its
first line names (`# battery_ext.py`) and run against a real core started by TestSite — the
polled extension, the pushed-data device, the agent that follows setpoint outcomes, the tool on a
Client, and the guide's own test."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.battery.simulator import serve
from extensions.sdk import Agent, Extension
from extensions.sdk.testing import TestSite, free_port, until
from smx.sdk import SetpointState
from smx.timestamps import ts_of
from smx.v1 import point_pb2
from smx.values import to_value
from tests.extensions.test_client import client_points

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "EXTENSIONS.md"
BLOCK = re.compile(r"```python\n# (\w+)\.py\n(.*?)```", re.DOTALL)
CLIENTS = {
    "battery": ("trusted", ["trusted-extension"], []),
    "meter": ("trusted", ["trusted-extension"], []),
    "smm": ("trusted", ["trusted-extension"], []),
    "shaver": ("untrusted", ["untrusted-agent"], []),
    "gui": ("untrusted", ["gui"], []),
}


def blocks() -> dict[str, str]:
    text = GUIDE.read_text()
    found = dict(BLOCK.findall(text))
    # Every python block is named, so none escapes this test.
    assert len(found) == text.count("```python"), "a ```python block without '# name.py'"
    return found


@pytest.fixture(scope="module")
def guide() -> Iterator[dict[str, types.ModuleType]]:
    """Each block as an importable module (the test block imports `battery_ext`)."""
    modules = {}
    for name, code in blocks().items():
        module = types.ModuleType(name)
        module.__file__ = f"{GUIDE}:{name}.py"
        sys.modules[name] = module  # dataclass settings resolve their annotations there
        exec(compile(code, module.__file__, "exec"), module.__dict__)
        modules[name] = module
    yield modules
    for name in modules:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def site() -> Iterator[TestSite]:
    with TestSite(CLIENTS) as s:
        yield s


def test_the_guide_has_the_blocks_this_test_runs():
    assert list(blocks()) == [
        "battery_ext",
        "pushing_meter",
        "peak_shaver",
        "battery_view",
        "battery_history",
        "test_battery_ext",
    ]


async def test_the_polled_extension_the_agent_and_the_tool(guide, site):
    port = free_port()
    simulator = asyncio.create_task(serve("127.0.0.1", port))
    battery = Extension(site.env("battery", config={"port": port, "interval": "200ms"}))
    guide["battery_ext"].setup(battery)
    shaver = Agent(site.env("shaver", config={"limit": 4000.0, "valid_for": "30s"}))
    guide["peak_shaver"].setup(shaver)
    outcomes: list[SetpointState] = []
    shaver.on_outcome(outcomes.append)
    await battery.start()
    await shaver.start()
    try:
        async with site.client("smm") as smm, site.client("gui") as gui:
            await until(lambda: gui.list_points("battery/P_set"))  # the owner is there
            # 6 kW drawn at the PCC: the agent asks the battery to discharge 2 kW.
            smm.publish_sample(
                point_pb2.PointSample(name="smm/P", value=to_value(6000.0), source_time=ts_of())
            )
            done = await until(lambda: next((o for o in outcomes if o.answered), None))
            assert (done.name, done.value, done.status) == ("battery/P_set", -2000.0, "APPLIED")
            await until(lambda: _value(gui, "battery/P", -2000.0))
        text = await guide["battery_view"].show_battery(site.client("gui"))
        assert "battery/P=-2000.0 W GOOD" in text and re.search(r"battery/SoC=[\d.]+ % GOOD", text)
        day = await until(lambda: guide["battery_history"].battery_day(site.client("gui")))
        assert all(t % 300 == 0 and isinstance(w, float) for t, w in day), day
    finally:
        await shaver.stop()
        await battery.stop()
        simulator.cancel()


async def test_the_pushed_data_device(guide, site):
    lines: asyncio.Queue[dict] = asyncio.Queue()

    async def push(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(json.dumps(await lines.get()).encode() + b"\n")
            await writer.drain()

    server = await asyncio.start_server(push, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    meter = Extension(site.env("meter", config={"port": port}))
    guide["pushing_meter"].setup(meter)
    await meter.start()
    try:
        lines.put_nowait({"P": 1200.0, "Ap": 4321.5, "ts": 1_700_000_000.0})
        async with site.client("gui") as gui:
            got = await until(lambda: client_points(gui, "meter/P", "meter/Ap"))
            assert got["meter/P"].value == 1200.0 and got["meter/P"].unit == "W"
            assert got["meter/Ap"].source_time == 1_700_000_000.0
            lines.put_nowait({"error": "F12"})
            await until(lambda: _quality(gui, "meter/P", "BAD"))
            assert "F12" in meter.health()["last_error"]
    finally:
        await meter.stop()
        server.close()


async def test_the_guides_own_test(guide):
    await guide["test_battery_ext"].test_battery_publishes_and_obeys()


async def _value(client, name, value):
    got = await client_points(client, name)
    return got if got and got[name].value == value else None


async def _quality(client, name, quality):
    got = await client_points(client, name)
    return got if got and got[name].quality == quality else None
