"""A setpoint's fallback reaches the controller even when it falls due while the link is down:
an expiry during an outage, and the start-up fallback, which the SDK runs before the battery's
handshake. It is pending, sent first after each handshake, until the controller confirms it or
a newer command of its flag replaces it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from extensions.energy_router import messages as m
from extensions.energy_router.frames import Frame, encode, float_frame
from extensions.energy_router.messages import BATTERY
from extensions.energy_router.simulator import EnergyRouterSim
from extensions.sdk.testing import TestSite, until

from .test_end_to_end import CONFIG, ROOT
from .test_link import battery  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(90)

BAT_ZERO = Frame(BATTERY.command, m.BAT_P, bytes(4))


async def test_an_expiry_during_an_outage_is_sent_after_the_handshake(battery) -> None:  # noqa: F811
    sim, run = battery
    await until(lambda: run.link.up)
    await asyncio.sleep(0.4)
    p = float_frame(BATTERY.command, m.BAT_P, 1500.0)
    assert await run.link.command(p) is True
    sim.silent = True
    await until(lambda: not run.link.up, timeout=5)
    run.link.fall_back(m.BAT_P, BAT_ZERO)  # the setpoint expires during the outage
    sim.p_bat = 1500.0  # the controller kept it (the extension's traffic stood for a link)
    start = len(sim.received)
    sim.silent = False
    await until(lambda: m.BAT_P not in run.link.pending_fallback, what="fallback confirmed")
    after = [f for f in sim.received[start:] if f.flag not in (m.KEEP_ALIVE, m.ID)]
    assert [encode(f) for f in after] == [bytes.fromhex("fe060b3c00000000")]
    assert sim.p_bat == 0.0
    assert m.BAT_P not in run.link.in_force


async def test_a_refused_fallback_stays_pending_a_newer_command_replaces_it(battery) -> None:  # noqa: F811
    sim, run = battery
    await until(lambda: run.link.up)
    await asyncio.sleep(0.4)
    sim.refuse.add(m.BAT_P)
    run.link.fall_back(m.BAT_P, BAT_ZERO)
    await until(lambda: sim.received[-1] == BAT_ZERO)
    await asyncio.sleep(0.3)
    assert run.link.pending_fallback == {m.BAT_P: BAT_ZERO}
    sim.refuse.clear()
    p = float_frame(BATTERY.command, m.BAT_P, 200.0)
    assert await run.link.command(p) is True
    assert run.link.pending_fallback == {}


async def test_the_start_up_fallback_waits_for_the_battery_handshake() -> None:
    clients = {"er": ("trusted", ["trusted-extension"], [])}
    with TestSite(clients) as site:
        sim = EnergyRouterSim(tick=0.1, startup_pause=0.5, capacity_wh=50000.0)
        sim.inverter.link(site.home / "er-inverter.pty")
        sim.battery.link(site.home / "er-battery.pty")
        sim.start()
        sim.battery.p_bat = 1500.0  # what the controller kept from the previous run
        env = {**site.environ("er", CONFIG), "PYTHONPATH": str(ROOT)}
        with open(site.home / "er.log", "wb") as log:
            ext = subprocess.Popen(
                [sys.executable, "-m", "extensions.energy_router"],
                env=env,
                cwd=site.home,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await until(lambda: sim.battery.p_bat == 0.0, what="start-up fallback", timeout=20)
            assert encode(BAT_ZERO) in [encode(f) for f in sim.battery.received]
            # P_PV_set's start-up fallback with no PV mode in force: MPPT
            assert Frame(BATTERY.command, m.PV_MODE, b"\x01") in sim.battery.received
        finally:
            ext.terminate()
            ext.wait(20)
            sim.stop()


async def test_a_fallback_that_is_the_mode_in_force_is_sent_once(battery) -> None:  # noqa: F811
    sim, run = battery
    await until(lambda: run.link.up)
    await asyncio.sleep(0.4)
    pv_off = Frame(BATTERY.command, m.PV_MODE, b"\x00")
    assert await run.link.command(pv_off) is True
    sim.silent = True
    await until(lambda: not run.link.up, timeout=5)
    # P_PV_set expires during the outage: its fallback is the PV mode in force.
    run.link.fall_back(m.PV_P, run.link.in_force[m.PV_MODE])
    start = len(sim.received)
    sim.silent = False
    await until(lambda: not run.link.pending_fallback, what="fallback confirmed")
    after = [encode(f) for f in sim.received[start:] if f.flag not in (m.KEEP_ALIVE, m.ID)]
    assert after == [bytes.fromhex("fe030b4600")]
    assert run.link.in_force == {m.PV_MODE: pv_off}
