"""The link to each controller against the simulated controllers over real pseudo-terminals:
handshake, keep-alive, measurements, confirmations, garbage on the line, a silent or restarted
controller and the new handshake after it; and the simulator's own firmware behaviour."""

from __future__ import annotations

import asyncio
import os
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import serial

from extensions.energy_router import messages as m
from extensions.energy_router.frames import FrameDecoder, encode, float_frame
from extensions.energy_router.link import ControllerLink, LinkDown, LinkTiming
from extensions.energy_router.messages import BATTERY, INVERTER
from extensions.energy_router.points import ErPoints
from extensions.energy_router.simulator import BatteryPvSim, InverterSim
from extensions.sdk.devices import DeviceState
from extensions.sdk.pushed import attach, push_forever
from extensions.sdk.testing import until

pytestmark = pytest.mark.timeout(60)

TIMING = LinkTiming(
    keepalive=0.1, link_timeout=1.0, startup_pause=0.3, answer_timeout=0.3, confirm_timeout=0.5
)
POINTS = ErPoints("er", 0.05, battery_sign=-1.0, inverter_sign=-1.0)


@dataclass
class Running:
    link: ControllerLink
    state: DeviceState
    task: asyncio.Task[None]
    seen: list[tuple[str, Any, str]] = field(default_factory=list)

    def last(self, name: str) -> tuple[Any, str] | None:
        for point, value, quality in reversed(self.seen):
            if point == name:
                return value, quality
        return None


async def start_link(port: str, controller: m.Controller, soc: float = 42.0) -> Running:
    async def initial_soc() -> float:
        return soc

    link = ControllerLink(
        f"er.{controller.name}",
        controller,
        port,
        TIMING,
        lambda frame: POINTS.readings(controller, frame),
        POINTS.online(controller),
        initial_soc=initial_soc,
        max_backoff=0.5,
    )
    link.reconnect_delay = 0.1
    state = DeviceState()
    seen: list[tuple[str, Any, str]] = []
    attach(link, state, lambda name, value, quality, _: seen.append((name, value, quality)))
    task = asyncio.create_task(push_forever(link, state))
    return Running(link, state, task, seen)


async def stop_link(run: Running) -> None:
    run.task.cancel()
    await asyncio.gather(run.task, return_exceptions=True)
    await run.link.close()


@pytest.fixture
async def battery() -> AsyncIterator[tuple[BatteryPvSim, Running]]:
    sim = BatteryPvSim(tick=0.05, startup_pause=0.3, capacity_wh=10.0).start()
    run = await start_link(sim.port, BATTERY)
    yield sim, run
    await stop_link(run)
    sim.stop()


async def test_handshake_then_measurements_in_the_load_reference(battery) -> None:
    sim, run = battery
    await until(lambda: run.link.up, what="handshake")
    started = time.monotonic()
    # The ID request carried the initial SoC; the controller pauses before reporting.
    assert sim.soc == pytest.approx(42.0)
    await until(lambda: run.last("er/SoC"), what="first measurement")
    assert time.monotonic() - started >= 0.25
    assert run.last("er/SoC") == (pytest.approx(42.0), "GOOD")
    # The simulated PV produces 2000 W: negative in the load reference.
    assert run.last("er/P_PV") == (pytest.approx(-2000.0), "GOOD")
    assert run.last("er/battery_online") == (True, "GOOD")
    # Keep-alives go out every 0.1 s.
    await asyncio.sleep(0.5)
    kas = [f for f in sim.received if f.flag == m.KEEP_ALIVE]
    assert len(kas) >= 3
    assert sim.links_lost == 0
    # An error frame is published as its code; the link and the measurements go on.
    sim.error(m.PV_ERROR, 3)
    await until(lambda: run.last("er/pv_error") == (3, "GOOD"), what="error code")
    assert run.state.ok and run.last("er/SoC")[1] == "GOOD"


async def test_a_confirmed_command_changes_the_controller(battery) -> None:
    sim, run = battery
    await until(lambda: run.link.up)
    # Pbat > 0 is discharging in the controller's own sign
    ok = await run.link.command(float_frame(BATTERY.command, m.BAT_P, 1000.0))
    assert ok is True
    assert sim.p_bat == 1000.0
    await until(lambda: (run.last("er/P_ESS") or (0,))[0] == pytest.approx(-1000.0))
    soc = sim.soc
    await asyncio.sleep(0.3)
    assert sim.soc < soc  # discharging 1000 W from 10 Wh moves the SoC at once


async def test_refused_and_unanswered_commands(battery) -> None:
    sim, run = battery
    await until(lambda: run.link.up)
    sim.refuse.add(m.BAT_P)
    assert await run.link.command(float_frame(BATTERY.command, m.BAT_P, 500.0)) is False
    sim.refuse.clear()
    sim.ignore.add(m.PV_P)
    t0 = time.monotonic()
    assert await run.link.command(float_frame(BATTERY.command, m.PV_P, 500.0)) is None
    assert TIMING.confirm_timeout <= time.monotonic() - t0 < TIMING.confirm_timeout + 1.0


async def test_garbage_on_the_line_loses_no_good_frame(battery) -> None:
    sim, run = battery
    await until(lambda: run.last("er/SoC"))
    for _ in range(20):
        sim.garbage = b"\x00\xfe\x0c\x13\xfe\xfe\x40noise" + bytes(range(0xF0, 0x100))
        await asyncio.sleep(0.06)
    count = len([s for s in run.seen if s[0] == "er/SoC"])
    await asyncio.sleep(0.5)
    assert len([s for s in run.seen if s[0] == "er/SoC"]) >= count + 5
    assert run.link.handshakes == 1 and run.state.failures == 0
    assert await run.link.command(float_frame(BATTERY.command, m.BAT_P, -200.0)) is True


async def test_a_silent_controller_is_a_lost_link_then_a_new_handshake(battery) -> None:
    sim, run = battery
    await until(lambda: run.last("er/SoC"))
    sim.silent = True
    await until(lambda: not run.state.ok, what="link lost", timeout=5)
    assert "link lost" in run.state.last_error or "ID requests" in run.state.last_error
    assert run.last("er/SoC")[1] == "BAD"
    assert run.last("er/battery_online") == (False, "GOOD")
    with pytest.raises(LinkDown):
        await run.link.command(float_frame(BATTERY.command, m.BAT_P, 1.0))
    sim.silent = False
    await until(lambda: run.link.handshakes == 2, what="new handshake", timeout=10)
    await until(lambda: run.last("er/SoC")[1] == "GOOD", timeout=5)
    assert sim.handshakes == 2


async def test_a_restarted_controller_on_the_same_port_path(tmp_path: Path) -> None:
    path = tmp_path / "inverter.pty"
    sim = InverterSim(tick=0.05, startup_pause=0.3).start()
    sim.link(path)
    run = await start_link(str(path), INVERTER)
    try:
        await until(lambda: run.last("er/U"), what="inverter data")
        assert await run.link.command(float_frame(INVERTER.command, m.INV_P, 700.0)) is True
        # The inverter's own P > 0 is exported: into the ER is negative.
        await until(lambda: run.last("er/P")[0] == pytest.approx(-700.0))
        assert run.last("er/grid_connected") == (True, "GOOD")
        sim.stop()
        await until(lambda: not run.state.ok, what="port gone", timeout=5)
        sim = InverterSim(tick=0.05, startup_pause=0.3).start()
        sim.link(path)
        await until(lambda: run.link.handshakes == 2, timeout=10)
        # The confirmed power setpoint is sent again after the new handshake.
        await until(lambda: sim.p == 700.0, what="setpoint sent again")
        await until(lambda: run.last("er/U")[1] == "GOOD")
    finally:
        await stop_link(run)
        sim.stop()


def _read_frames(port: serial.Serial, seconds: float) -> list[m.Frame]:
    decoder, frames = FrameDecoder(), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames += decoder.feed(port.read(256))
    return frames


def test_the_simulated_controller_waits_answers_pauses_and_loses_a_silent_link() -> None:
    sim = BatteryPvSim(tick=0.05, startup_pause=0.4).start()
    try:
        with serial.Serial(sim.port, 9600, timeout=0.05) as port:
            # Before its ID request the controller does nothing, whatever it is told.
            port.write(encode(float_frame(BATTERY.command, m.BAT_P, 500.0)))
            assert _read_frames(port, 0.3) == []
            port.write(b"\x13\x37" + encode(m.id_request(BATTERY, 80.0)))
            frames = _read_frames(port, 0.3)
            assert frames == [m.id_answer(BATTERY)]  # then nothing during its pause
            assert sim.soc == pytest.approx(80.0)
            frames = _read_frames(port, 0.5)
            assert {f.flag for f in frames} >= {m.BAT_P, m.PV_P}
            port.write(encode(float_frame(BATTERY.command, m.BAT_P, 500.0)))
            # Then a silent computer: keep-alives after 5 ticks, 3 rounds, then the link is
            # lost and the battery stops.
            frames = _read_frames(port, 0.1)
            assert m.confirmation(BATTERY, m.BAT_P, True) in frames
            assert sim.p_bat == 500.0
            deadline = time.monotonic() + 3
            while not sim.links_lost and time.monotonic() < deadline:
                frames += _read_frames(port, 0.02)
            assert frames.count(m.keep_alive(BATTERY.data)) == 3
            assert sim.links_lost == 1 and sim.p_bat == 0.0
            # An oversize frame is dropped; the next frame is taken.
            port.write(bytes((0xFE, 63, 11, 60)) + bytes(61) + encode(m.keep_alive(11)))
            port.write(encode(float_frame(BATTERY.command, m.BAT_P, 100.0)))
            assert m.confirmation(BATTERY, m.BAT_P, True) in _read_frames(port, 0.3)
    finally:
        sim.stop()


async def test_swapped_ports_are_named_and_keep_the_battery_soc() -> None:
    sim = BatteryPvSim(tick=0.05, startup_pause=0.3, capacity_wh=10.0).start()
    sim.started, sim.soc = True, 80.0  # a running battery controller
    # The inverter link on the battery's port; its ID request carries the SoC as well.
    run = await start_link(sim.port, INVERTER, soc=80.0)
    try:
        await until(lambda: run.state.failures >= 1, what="the battery's answer")
        assert run.state.last_error.endswith(
            f"the battery controller (id 2) answered on inverter_port ({sim.port}): ports swapped?"
        )
        assert run.link.handshakes == 0 and run.link.reconnect_delay == run.link.max_backoff
        # One ID request, FE 06 0A 01 + 80.0: the controller kept its SoC.
        assert encode(m.id_request(INVERTER, 80.0)) == bytes.fromhex("fe060a010000a042")
        assert sim.handshakes == 1 and sim.soc == pytest.approx(80.0, abs=0.1)
    finally:
        await stop_link(run)
        sim.stop()


async def test_a_stuck_output_never_blocks_the_loop_and_ends_the_session(battery) -> None:
    sim, run = battery
    await until(lambda: run.link.up)
    fd = run.link._serial.fileno()
    termios.tcflow(fd, termios.TCOOFF)  # the port takes no more output (XOFF)
    gaps: list[float] = []

    async def ticker() -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - t0)

    tick = asyncio.create_task(ticker())
    p = float_frame(BATTERY.command, m.BAT_P, 100.0)
    # A few frames wait for the port; the loop goes on (a blocking write stalled it 1 s).
    assert await asyncio.gather(*(run.link.command(p) for _ in range(3))) == [None] * 3
    tick.cancel()
    assert gaps and max(gaps) < 0.2
    assert run.link.up
    # More than a few: the output is stuck, the session ends.
    results = await asyncio.gather(
        *(run.link.command(p) for _ in range(40)), return_exceptions=True
    )
    assert any(isinstance(r, LinkDown) and "output stuck" in str(r) for r in results)
    await until(lambda: not run.state.ok, what="session ended")
    assert "output stuck" in run.state.last_error
    fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    termios.tcflow(fd, termios.TCOON)  # the port's output flows again (XON)
    os.close(fd)
    await until(lambda: run.link.handshakes == 2, what="new session", timeout=10)
