"""End to end: a real core, the extension as its own process with its own certificate, reading
the simulated controllers over pseudo-terminals (symlinked in the site directory, as a
`[simulators]` entry would make them). Points with their units and signs, setpoints applied,
clamped, refused and unconfirmed as the core reports them, garbage on a line, a silent
controller and a restarted Energy Router."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extensions.energy_router import messages as m
from extensions.energy_router.frames import encode
from extensions.energy_router.simulator import EnergyRouterSim
from extensions.sdk.testing import TestSite, point_where, until
from smx.health import read_health_file
from smx.process_env import RunPaths
from smx.quality import quality_name

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[3]
CONFIG = {
    "inverter_port": "er-inverter.pty",  # relative: the site directory's
    "battery_port": "er-battery.pty",
    "keepalive": "200ms",
    "link_timeout": "1500ms",
    "startup_pause": "500ms",
    "answer_timeout": "500ms",
    "confirm_timeout": "1s",
    "period": "250ms",
    "max_backoff": "1s",
    "initial_soc": 50,
    "battery_charge_max": 2000,
}


@dataclass
class Rig:
    site: TestSite
    sim: EnergyRouterSim
    ext: subprocess.Popen[bytes]

    def power_on(self, soc: float = 0.0) -> EnergyRouterSim:
        """A (new) Energy Router: both controllers on fresh ptys behind the same links."""
        self.sim = EnergyRouterSim(tick=0.1, startup_pause=0.5, capacity_wh=50.0)
        self.sim.inverter.link(self.site.home / "er-inverter.pty")
        self.sim.battery.link(self.site.home / "er-battery.pty")
        return self.sim.start()

    def health(self) -> Any:
        return read_health_file(RunPaths(self.site.home).health_file("er"))

    def log(self) -> str:
        return (self.site.home / "er.log").read_text(errors="replace")


@pytest.fixture
def rig() -> Iterator[Rig]:
    clients = {
        "er": ("trusted", ["trusted-extension"], []),
        "ctrl": ("untrusted", ["untrusted-agent"], []),
    }
    with TestSite(clients) as site:
        rig = Rig(site, None, None)  # type: ignore[arg-type]
        rig.power_on()
        env = {**site.environ("er", CONFIG), "PYTHONPATH": str(ROOT)}
        with open(site.home / "er.log", "wb") as log:
            rig.ext = subprocess.Popen(
                [sys.executable, "-m", "extensions.energy_router"],
                env=env,
                cwd=site.home,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield rig
        finally:
            if rig.ext.poll() is None:
                rig.ext.terminate()
                try:
                    rig.ext.wait(20)
                except subprocess.TimeoutExpired:
                    rig.ext.kill()
            rig.sim.stop()
            code, log_text = rig.ext.returncode, rig.log()
    assert code == 0, log_text[-3000:]  # a clean stop on SIGTERM


def is_good(p: Any) -> bool:
    return quality_name(p.quality) == "GOOD"


def good(value: float, tol: float = 1.0) -> Any:
    return lambda p: is_good(p) and abs(p.value.double_value - value) <= tol


async def test_points_and_setpoints_through_the_core(rig: Rig) -> None:
    site, sim = rig.site, rig.sim
    # The battery controller was told the configured SoC (the core held none yet).
    soc = await point_where(site, "er/SoC", lambda p: is_good(p), timeout=20)
    assert soc.unit == "%" and soc.value.double_value == pytest.approx(50.0, abs=1)
    pv = await point_where(site, "er/P_PV", good(-2000.0))
    assert pv.unit == "W"
    u = await point_where(site, "er/U", good(230.0))
    assert u.unit == "V"
    grid = await point_where(site, "er/grid_connected", lambda p: is_good(p))
    assert grid.value.bool_value is True
    await point_where(site, "er/U_DC", good(400.0))

    async with site.client("ctrl") as ctrl:
        # Charge 1500 W: the controller's own sign is Pbat < 0 when charging.
        sp = await until(lambda: ctrl.request_setpoint("er/P_ESS_set", 1500.0, valid_for=60))
        done = await ctrl.outcome(sp.id, timeout=10)
        assert (done.status, done.applied_value) == ("APPLIED", 1500.0)
        assert sim.battery.p_bat == pytest.approx(-1500.0)
        await point_where(site, "er/P_ESS", good(1500.0))
        # Beyond battery_charge_max: clamped, and the controller runs the limit.
        sp = await ctrl.request_setpoint("er/P_ESS_set", 5000.0, valid_for=60)
        done = await ctrl.outcome(sp.id, timeout=10)
        assert (done.status, done.applied_value) == ("CLAMPED", 2000.0)
        assert sim.battery.p_bat == pytest.approx(-2000.0)
        # Export 800 W from the inverter: P < 0 in the load reference, > 0 on its wire.
        sp = await ctrl.request_setpoint("er/P_set", -800.0, valid_for=60)
        assert (await ctrl.outcome(sp.id, timeout=10)).status == "APPLIED"
        assert sim.inverter.p == pytest.approx(800.0)
        await point_where(site, "er/P", good(-800.0))
        # The controller answers 0: rejected, and nothing changed.
        sim.inverter.refuse.add(m.INV_Q)
        sp = await ctrl.request_setpoint("er/Q_set", 300.0, valid_for=60)
        done = await ctrl.outcome(sp.id, timeout=10)
        assert done.status == "REJECTED" and "refused" in done.reason
        assert sim.inverter.q == 0.0
        # A PV limit of the wrong sign is refused, not clamped to 0 (which switches the PV off).
        sp = await ctrl.request_setpoint("er/P_PV_set", 500.0, valid_for=60)
        done = await ctrl.outcome(sp.id, timeout=10)
        assert done.status == "REJECTED" and "<= 0 W" in done.reason
        assert sim.battery.p_pv == 2000.0
        # No confirmation: the controller may run it, and the status says so.
        sim.battery.ignore.add(m.PV_P)
        sp = await ctrl.request_setpoint("er/P_PV_set", -1000.0, valid_for=60)

        async def unconfirmed() -> Any:
            state = await ctrl.get_setpoint(id=sp.id)
            return state if state.status != "PENDING" else None

        done = await until(unconfirmed, timeout=10)
        assert done.status == "UNCONFIRMED" and "no confirmation" in done.reason
        assert sim.battery.p_pv == 1000.0  # it did run it
        await point_where(site, "er/P_PV", good(-1000.0))
        # A confirmation that comes late settles the outcome.
        sim.battery.delay[m.BAT_P] = 1.8
        sp = await ctrl.request_setpoint("er/P_ESS_set", -500.0, valid_for=60)
        done = await until(unconfirmed, timeout=10)
        assert done.status == "UNCONFIRMED"
        done = await ctrl.outcome(sp.id, timeout=10)
        assert (done.status, done.applied_value) == ("APPLIED", -500.0)
        assert sim.battery.p_bat == pytest.approx(500.0)
        # A mode outside the controller's list is refused before anything is sent.
        sp = await ctrl.request_setpoint("er/inverter_mode_set", 7, valid_for=60)
        assert (await ctrl.outcome(sp.id, timeout=10)).status == "REJECTED"
        # Island mode: the inverter leaves the grid and says so.
        sp = await ctrl.request_setpoint("er/inverter_mode_set", 2, valid_for=60)
        assert (await ctrl.outcome(sp.id, timeout=10)).status == "APPLIED"
        assert sim.inverter.mode == 2
        await point_where(site, "er/grid_connected", lambda p: p.value.bool_value is False)

    # Garbage on the battery line: the link keeps its good frames, no new handshake.
    handshakes = sim.battery.handshakes
    for _ in range(10):
        sim.battery.garbage = b"\xfe\x30\x00junk\xfe" + bytes(range(0xF8, 0x100))
        await point_where(site, "er/SoC", lambda p: is_good(p))
    assert sim.battery.handshakes == handshakes
    health = rig.health()
    assert health.devices["er.battery"].ok and health.devices["er.inverter"].ok


async def test_a_lost_controller_then_a_restarted_router(rig: Rig) -> None:
    site = rig.site
    charged = await point_where(site, "er/SoC", lambda p: is_good(p), timeout=20)
    # The battery controller falls silent: its points turn BAD, the health says why, the
    # inverter's stay GOOD.
    rig.sim.battery.silent = True
    await point_where(
        site, "er/SoC", lambda p: quality_name(p.quality) in ("BAD", "STALE"), timeout=10
    )
    # STALE may come first (3 periods); the link is declared lost after link_timeout.
    await point_where(
        site, "er/battery_online", lambda p: is_good(p) and p.value.bool_value is False
    )
    await until(lambda: not rig.health().devices["er.battery"].ok, timeout=10)
    assert "link lost" in rig.health().devices["er.battery"].last_error
    assert rig.health().devices["er.inverter"].ok
    await point_where(site, "er/U", lambda p: is_good(p))
    # Not refreshed for 3 periods: the core marks them STALE.
    await point_where(site, "er/P_PV", lambda p: quality_name(p.quality) == "STALE", timeout=10)

    # A power cycle of the Energy Router: new ptys behind the same paths, controllers that
    # know no SoC. The extension makes a new handshake and hands over the last SoC the core
    # holds instead of the configured 50 %.
    rig.sim.stop()
    sim = rig.power_on()
    await until(lambda: sim.battery.handshakes == 1 and sim.inverter.handshakes == 1, timeout=15)
    assert sim.battery.soc == pytest.approx(charged.value.double_value, abs=0.01)
    await point_where(site, "er/SoC", lambda p: is_good(p), timeout=10)
    await point_where(site, "er/U", lambda p: is_good(p))
    await until(lambda: rig.health().devices["er.battery"].ok, timeout=10)


async def test_a_pv_limit_expires_into_the_pv_mode_in_force(rig: Rig) -> None:
    site, sim = rig.site, rig.sim
    await point_where(site, "er/SoC", lambda p: is_good(p), timeout=20)
    async with site.client("ctrl") as ctrl:
        off = await until(lambda: ctrl.request_setpoint("er/pv_mode_set", 0, valid_for=120))
        assert (await ctrl.outcome(off.id, timeout=10)).status == "APPLIED"
        limit = await ctrl.request_setpoint("er/P_PV_set", -500.0, valid_for=1)
        assert (await ctrl.outcome(limit.id, timeout=10)).status == "APPLIED"
        start = len(sim.battery.received)
        await until(
            lambda: (
                len(sim.battery.received) > start
                and any(f.flag == m.PV_MODE for f in sim.battery.received[start:])
            ),
            what="P_PV_set's fallback",
            timeout=10,
        )
        await asyncio.sleep(0.5)
        # The fallback ends the limit with the mode in force, PV off: FE 03 0B 46 00
        sent = [encode(f) for f in sim.battery.received[start:] if f.flag == m.PV_MODE]
        assert sent == [bytes.fromhex("fe030b4600")]
        assert sim.battery.pv_mode == 0
        assert (await ctrl.get_setpoint(id=off.id)).status == "APPLIED"
