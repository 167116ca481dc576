"""Confirmations carry no id: each answers the oldest unanswered command of its flag, and an
answer that may belong to another command is reported UNCONFIRMED and puts nothing in force."""

from __future__ import annotations

import asyncio

import pytest

from extensions.energy_router import messages as m
from extensions.energy_router.frames import Frame, encode, float_frame
from extensions.energy_router.messages import BATTERY
from extensions.sdk.testing import until

from .test_link import battery  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


async def reconnect(sim, run) -> int:  # type: ignore[no-untyped-def]
    """Lose the link and wait for the new handshake; the index of the first frame after it."""
    handshakes = run.link.handshakes
    sim.silent = True
    await until(lambda: not run.link.up, timeout=5)
    start = len(sim.received)
    sim.silent = False
    await until(lambda: run.link.handshakes > handshakes and run.link.up, timeout=10)
    await asyncio.sleep(0.4)
    return start


async def test_a_late_answer_never_settles_a_newer_command(battery) -> None:  # noqa: F811
    sim, run = battery
    await until(lambda: run.link.up)
    await asyncio.sleep(0.4)  # past the controller's start-up pause
    sim.delay[m.BAT_P] = 0.8  # A is confirmed (1) after confirm_timeout
    a = float_frame(BATTERY.command, m.BAT_P, 1000.0)
    assert await run.link.command(a) is None
    sim.refuse.add(m.BAT_P)  # B is refused (0); A's late 1 comes while B waits
    sim.delay[m.BAT_P] = 0.5
    b = float_frame(BATTERY.command, m.BAT_P, -3000.0)
    assert encode(b) == bytes.fromhex("fe060b3c00803bc5")
    assert await run.link.command(b) is None  # not True: which answer was whose is unknown
    assert m.BAT_P not in run.link.in_force
    assert sim.p_bat == 1000.0  # the controller runs A
    sim.refuse.clear()
    sim.delay.clear()
    start = await reconnect(sim, run)
    assert [f for f in sim.received[start:] if f.flag == m.BAT_P] == []  # B never replayed


async def test_a_late_answer_of_the_newest_command_is_reported(battery) -> None:  # noqa: F811
    sim, run = battery
    await until(lambda: run.link.up)
    await asyncio.sleep(0.4)
    sim.delay[m.BAT_P] = 0.8
    reported: list[bool] = []

    async def late(ok: bool) -> None:
        reported.append(ok)

    a = float_frame(BATTERY.command, m.BAT_P, 500.0)
    assert await run.link.command(a, late) is None
    await until(lambda: reported == [True], what="late report")
    assert run.link.in_force[m.BAT_P] == a
    sim.delay.clear()
    # In order, one after the other: each its own answer.
    sim.refuse.add(m.BAT_P)
    assert await run.link.command(float_frame(BATTERY.command, m.BAT_P, 700.0)) is False
    assert run.link.in_force[m.BAT_P] == a  # refused: the controller still runs A
    start = await reconnect(sim, run)
    assert encode(a) == bytes.fromhex("fe060b3c0000fa43")
    assert [f for f in sim.received[start:] if f.flag == m.BAT_P] == [a]


async def test_an_expired_mode_confirmed_late_is_not_sent_again(battery) -> None:  # noqa: F811
    sim, run = battery
    await until(lambda: run.link.up)
    await asyncio.sleep(0.4)
    sim.delay[m.BAT_MODE] = 0.8
    reported: list[bool] = []

    async def late(ok: bool) -> None:
        reported.append(ok)

    off = Frame(BATTERY.command, m.BAT_MODE, b"\x00")
    assert await run.link.command(off, late) is None
    run.link.forget(m.BAT_MODE)  # the mode setpoint expires before its late answer
    await asyncio.sleep(0.8)  # its late confirmation comes
    assert m.BAT_MODE not in run.link.in_force and reported == []
    sim.delay.clear()
    start = await reconnect(sim, run)
    assert [f for f in sim.received[start:] if f.flag == m.BAT_MODE] == []
