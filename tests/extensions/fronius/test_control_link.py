"""Battery control when the Modbus link is cut at a chosen moment, through a TCP relay between
the extension and the simulator's real pymodbus server, seen by a real core: a write whose
answer never came back is UNCONFIRMED (the inverter may run it), and settled by writing it
again once the inverter answers; a keep-alive the inverter does not answer makes an applied
setpoint UNCONFIRMED, its reason says when the inverter's timer has certainly reverted it, and
it is written again (APPLIED) when the inverter answers, while the setpoint is valid. At each
step, what the simulated battery does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from extensions.fronius import setup
from extensions.fronius.sim_plant import Plant
from extensions.fronius.simulator import Simulator
from extensions.sdk import Extension
from extensions.sdk.testing import TestSite, free_port, point_where, until
from smx.sdk import Client, SetpointState
from tests.support.relay import Relay

pytestmark = pytest.mark.timeout(60)

READ_REQUEST = 12  # bytes of a Modbus TCP read request (MBAP 7 + function, address, count)
RATE_WRITE = 21  # a write of the 4 rate registers (MBAP 7 + 6 + 2 x 4)
HOUSE = -500.0  # W: the autonomous battery covers the 500 W house (no PV)


@dataclass
class Rig:
    simulator: Simulator
    relay: Relay
    site: TestSite
    ctrl: Client
    # (id, status, reason, the battery's power at that moment) for every change the core tells
    seen: list[tuple[str, str, str, float]] = field(default_factory=list)

    def battery(self) -> float:
        self.simulator.plant.step()
        return self.simulator.plant.battery

    def seen_of(self, sid: str) -> list[tuple[str, str, float]]:
        """What the owner reported for `sid`, in order (the PENDING it starts with left out:
        the stream may show it or not)."""
        return [
            (status, reason, power)
            for i, status, reason, power in self.seen
            if i == sid and status != "PENDING"
        ]

    async def settled(self, sid: str, status: str, reason: str = "") -> SetpointState:
        async def check() -> SetpointState | None:
            state = await self.ctrl.get_setpoint(id=sid)
            return state if state.status == status and reason in state.reason else None

        return await until(check, timeout=15)


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    revert_after = request.param
    port = free_port()
    # No PV, a 500 W house, SoC 50 %: forced or autonomous, the battery's power tells.
    plant = Plant(pv_w=0, load_w=500, soc=50.0, reserve=10.0)
    simulator = await Simulator(modbus_port=port, plant=plant).start()
    relay = await Relay.start(port)
    site = TestSite(
        {
            "fronius": ("trusted", ["trusted-extension"], []),
            "ctrl": ("untrusted", ["untrusted-agent"], []),
        }
    )
    config = {
        "host": "127.0.0.1",
        "solar_api": False,
        "modbus_port": relay.port,
        "meter_unit": 0,
        "interval": "60s",  # one poll at start: the relay's byte count is the control's
        "response_timeout": "300ms",
        "revert_after": revert_after,
    }
    try:
        site.start()
        ext = Extension(site.env("fronius", config))
        setup(ext)
        await ext.start()
        try:
            await point_where(site, "fronius/P_ESS", lambda p: p.value.double_value == HOUSE)
            await until(lambda: simulator.modbus.writes, timeout=10)  # autonomous at start
            async with site.client("ctrl") as ctrl:
                rig = Rig(simulator, relay, site, ctrl)

                def record(state: SetpointState) -> None:
                    rig.seen.append((state.id, state.status, state.reason, rig.battery()))

                ctrl.on_outcome(record)
                yield rig
        finally:
            await ext.stop()
    finally:
        site.close()
        await relay.close()
        await simulator.stop()


@pytest.mark.parametrize("rig", [30], indirect=True)  # no keep-alive within the test
async def test_a_write_without_an_answer_is_unconfirmed_then_settled(rig: Rig):
    first = await until(lambda: rig.ctrl.request_setpoint("fronius/P_ESS_set", -2000.0, 60))
    await rig.settled(first.id, "APPLIED")
    assert rig.battery() == -2000.0 and rig.simulator.plant.mod == 3
    # The next request: its read passes, its rate block reaches the inverter, and the link is
    # cut before the answer comes back (StorCtl_Mod is 3 already: the inverter runs it).
    rig.relay.blackhole_after(READ_REQUEST + RATE_WRITE)
    sp = await rig.ctrl.request_setpoint("fronius/P_ESS_set", 2500.0, 60)
    unconfirmed = await rig.settled(sp.id, "UNCONFIRMED")
    assert unconfirmed.reason.startswith("write sent, no answer (no answer from unit 1")
    assert unconfirmed.reason.endswith(
        "the inverter may run it until its revert timer ends, at most 30 s"
    )
    assert rig.battery() == 2500.0  # it does: REJECTED would have said less
    # The link is back: written again, read back, APPLIED.
    rig.relay.restore()
    applied = await rig.settled(sp.id, "APPLIED")
    assert applied.applied_value == 2500.0 and rig.battery() == 2500.0
    assert [(s, p) for s, _, p in rig.seen_of(sp.id)] == [
        ("UNCONFIRMED", 2500.0),
        ("APPLIED", 2500.0),
    ]
    assert rig.simulator.plant.reverts == 0


@pytest.mark.parametrize("rig", [3], indirect=True)  # a keep-alive every second
async def test_a_silent_inverter_makes_the_setpoint_unconfirmed_then_reverted_then_applied(
    rig: Rig,
):
    sp = await until(lambda: rig.ctrl.request_setpoint("fronius/P_ESS_set", 2500.0, 60))
    await rig.settled(sp.id, "APPLIED")
    assert rig.battery() == 2500.0
    rig.relay.blackhole()
    cut = time.monotonic()
    # The next keep-alive gets no answer: the inverter may still run it (its 3 s timer).
    silent = await rig.settled(sp.id, "UNCONFIRMED", "may run the setpoint")
    assert silent.reason.startswith("the inverter does not answer (no answer from unit 1")
    # Its timer has certainly ended: it runs autonomous, and the reason says so.
    reverted = await rig.settled(sp.id, "UNCONFIRMED", "reverted")
    assert time.monotonic() - cut >= 3.0
    assert reverted.reason.endswith(
        "has reverted to autonomous mode by its timer: not applied now; "
        "written again when the inverter answers"
    )
    assert rig.simulator.plant.reverts == 1 and rig.battery() == HOUSE
    # It answers again while the setpoint is valid: written again, APPLIED.
    rig.relay.restore()
    await rig.settled(sp.id, "APPLIED")
    assert rig.battery() == 2500.0
    seen = rig.seen_of(sp.id)
    assert [(s, "reverted" in r) for s, r, _ in seen] == [
        ("APPLIED", False),
        ("UNCONFIRMED", False),
        ("UNCONFIRMED", True),
        ("APPLIED", False),
    ]
    # The battery's power at each: forced, still forced (its timer runs), autonomous, forced.
    assert [p for _, _, p in seen] == [2500.0, 2500.0, HOUSE, 2500.0]
