"""The process lifecycle every extension and agent shares (smx.sdk.Runtime), against a real
core: hooks in order, `on_connect` again after the core restarts, a crashed task stops the
process as failed (health file, exit code 1), and declarations checked against the vocabulary."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from extensions.sdk import Applied, Extension, PointSpec, SetupError
from extensions.sdk.testing import TestSite, until
from smx.health import read_health_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site():
    with TestSite({"battery": ("trusted", ["trusted-extension"], [])}) as s:
        yield s


async def test_hooks_run_in_order_and_on_connect_after_every_reconnect(site):
    ext = Extension(site.env("battery"))
    events: list[str] = []

    @ext.on_start
    async def started() -> None:
        events.append("start")

    @ext.on_connect
    async def connected() -> None:
        events.append("connect")

    @ext.on_stop
    async def stopping() -> None:
        events.append(f"stop, connected={ext.client.connected}")

    async def work() -> None:
        events.append("background")
        await asyncio.Event().wait()

    ext.background(work)
    await ext.start()
    await until(lambda: "connect" in events)
    assert events[:2] == ["background", "start"] or events[:2] == ["start", "background"]
    site.restart_core()
    await until(lambda: events.count("connect") == 2, timeout=20)
    await ext.stop()
    assert events[-1] == "stop, connected=True"  # hooks may still use the client
    assert read_health_file(ext.env.health_file).state == "stopping"


async def test_a_crashed_task_stops_the_process_as_failed(site):
    ext = Extension(site.env("battery"))

    async def broken() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("lost the modem")

    ext.background(broken, "modem")
    main = asyncio.create_task(ext.main())
    await asyncio.wait_for(main, 10)  # it stops by itself
    report = read_health_file(ext.env.health_file)
    assert report.state == "failed" and "lost the modem" in report.last_error
    assert ext.crash


def test_a_crash_exits_1_and_a_setup_error_exits_2(site, tmp_path):
    script = tmp_path / "ext.py"
    script.write_text(
        "import asyncio\n"
        "from extensions.sdk import Extension, SetupError\n"
        "def setup(ext):\n"
        "    if ext.config.get('bad'):\n"
        "        raise SetupError('extensions.battery.config.bad: no good')\n"
        "    async def boom():\n"
        "        raise RuntimeError('boom')\n"
        "    ext.background(boom)\n"
        "Extension.main_of(setup)\n"
    )
    env = {**site.environ("battery"), "PYTHONPATH": str(ROOT)}
    crashed = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, timeout=30
    )
    assert crashed.returncode == 1, crashed.stderr
    assert b"task boom crashed" in crashed.stderr
    env = {**site.environ("battery", {"bad": True}), "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, timeout=30
    )
    assert refused.returncode == 2
    assert refused.stderr.decode().strip() == (
        "cannot start: extensions.battery.config.bad: no good"
    )


def test_declarations_are_checked_against_the_vocabulary(site):
    ext = Extension(site.env("battery"))
    with pytest.raises(SetupError, match="battery/P declared with unit 'kW' but the vocabulary"):
        ext.declare(PointSpec("battery/P", unit="kW"))
    with pytest.raises(SetupError, match="battery/SoC declared as kind 'int'"):
        ext.declare([PointSpec("battery/SoC", unit="%", kind="int")])
    ext.declare(PointSpec("battery/P", unit="W"), PointSpec("battery/mode", kind="string"))


async def test_a_setpoint_without_a_spec_is_declared_with_the_vocabulary_unit(site):
    ext = Extension(site.env("battery"))

    @ext.on_setpoint("battery/P_set")
    async def set_power(req):
        return Applied()

    await ext.start()
    try:
        async with site.client("admin") as admin:
            specs = await until(lambda: admin.list_points("battery/P_set"))
        assert (specs[0].unit, specs[0].kind) == ("W", "double")
    finally:
        await ext.stop()


def test_the_health_file_is_json_the_supervisor_reads(site):
    env = site.env("battery")
    assert json.loads(env.config_file.read_text()) == {}
    assert env.health_file.parent == env.site_dir / "run"
