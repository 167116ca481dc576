"""Battery control stays within the battery's limits for the whole life of a setpoint, not only
when it is applied: every keep-alive rewrite plans the request again on the limits of the
moment (a battery that ran down to its reserve is held at 0 W, a full one is not charged) and
the setpoint's outcome is corrected (CLAMPED, then APPLIED again), as the core shows it. A SoC
or reserve that is unknown (not implemented, a bad scale factor, out of 0..100 %) allows no
discharge. The two writes of a change are in the order that leaves the device safe when the
link drops between them. Against the simulator's real pymodbus server, and a real core."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from extensions.fronius import setup, sim_sunspec
from extensions.fronius.control import Limits, StorageControl, plan
from extensions.fronius.sim_plant import Plant
from extensions.fronius.simulator import Simulator
from extensions.fronius.sunspec_source import SunSpecSource
from extensions.sdk import Applied, Clamped, Extension, Rejected
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool
from extensions.sdk.testing import TestSite, free_port, until

pytestmark = pytest.mark.timeout(90)

HOUR = 3600.0
AT_RESERVE = "SoC 5 % at or below the reserve 10 %"


def _signed(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


async def _started(plant: Plant) -> tuple[Simulator, SunSpecSource, LinkPool]:
    port = free_port()
    simulator = await Simulator(modbus_port=port, plant=plant).start()
    pool = LinkPool()
    link = pool.get(LinkConfig(host="127.0.0.1", port=port, response_timeout=0.5))
    return simulator, SunSpecSource(link, 1, 200), pool


def _plant(soc: float = 12.0) -> Plant:
    """No PV, a 500 W house, a battery with a 10 % reserve. Its clock stands still: the SoC is
    what the test sets, not integrated away between two reads."""
    return Plant(pv_w=0, load_w=500, soc=soc, reserve=10.0, clock=lambda: 0.0)


@pytest.fixture
async def sim():
    simulator, source, pool = await _started(_plant())
    try:
        yield simulator, source
    finally:
        pool.release(source.link)
        await simulator.stop()


def _rates(simulator: Simulator) -> list[list[int]]:
    return [w for a, w in simulator.modbus.writes if a == simulator.modbus.start_124 + 12]


async def test_keep_alive_holds_a_discharge_at_the_reserve_and_reports_it(sim):
    simulator, source = sim
    reports: list[Applied | Clamped] = []

    async def report(result: Applied | Clamped) -> None:
        reports.append(result)

    control = StorageControl(source, revert_after=2)
    assert await control.apply(-2000.0, time.time() + HOUR, report) == Applied(None)
    # The battery runs down below its reserve while the setpoint is in force.
    simulator.plant.soc = 5.0
    simulator.modbus.writes.clear()
    task = asyncio.create_task(control.keep_alive())
    try:
        # (the rates are written and read back before the outcome is reported)
        await until(lambda: _rates(simulator) and reports, timeout=5)
        out_word, in_word, _, revert = _rates(simulator)[0]
        # Rewritten as 0 W (both rates 0), not as the forced discharge of the request
        # (InWRte -40.00 %, OutWRte 40.00 %), with the revert timer restarted.
        assert (_signed(out_word), _signed(in_word), revert) == (0, 0, 2)
        assert reports == [Clamped(0.0, AT_RESERVE)]
        # Once the limit no longer binds, the request runs again and the outcome says so.
        simulator.plant.soc = 50.0
        await until(lambda: len(reports) == 2, timeout=5)
        assert reports[1] == Applied(None)
        assert _rates(simulator)[-1] == [4000, 0x10000 - 4000, 0, 2]
        # Nothing changes: rewritten, not reported again.
        writes = control.writes
        await until(lambda: control.writes >= writes + 2, timeout=5)
        assert len(reports) == 2
    finally:
        task.cancel()
    simulator.plant.step()
    assert simulator.plant.battery == -2000.0


async def test_keep_alive_stops_a_charge_when_the_battery_is_full(sim):
    simulator, source = sim
    reports: list[Applied | Clamped] = []

    async def report(result: Applied | Clamped) -> None:
        reports.append(result)

    control = StorageControl(source, revert_after=2)
    assert await control.apply(1500.0, time.time() + HOUR, report) == Applied(None)
    simulator.plant.soc = 100.0
    await control.refresh()
    assert reports == [Clamped(0.0, "battery full")]
    assert _rates(simulator)[-1] == [0, 0, 0, 2]
    assert control.active is not None and control.active.plan.power == 0.0


def test_an_unknown_soc_or_reserve_allows_no_discharge():
    known = Limits(w_cha_max=5000, max_charge=5000, max_discharge=5000, rate_sf=-2)
    for soc, reserve, unknown in [
        (None, 20.0, "SoC unknown"),
        (50.0, None, "reserve (MinRsvPct) unknown"),
        (None, None, "SoC and reserve (MinRsvPct) unknown"),
    ]:
        p = plan(-5000.0, Limits(**{**known.__dict__, "soc": soc, "reserve": reserve}))
        assert p.power == 0.0 and (p.in_word, p.out_word) == (0, 0), (soc, reserve)
        assert p.reason == f"{unknown}: no discharge, the reserve cannot be checked"
    # A charge cannot eat into the reserve; the battery ends it at full by itself (the
    # decision documented in docs/FRONIUS.md).
    assert plan(2000.0, Limits(**{**known.__dict__, "reserve": 10.0})).power == 2000.0


@pytest.mark.parametrize(
    ("registers", "reason"),
    [
        ({"ChaState": None}, "SoC unknown"),  # not implemented (0xFFFF)
        ({"ChaState_SF": 11}, "SoC unknown"),  # a scale factor outside -10..10
        ({"ChaState": 5000, "ChaState_SF": 2}, "SoC unknown"),  # 500000 %
        ({"MinRsvPct": None}, "reserve (MinRsvPct) unknown"),
    ],
)
async def test_a_soc_or_reserve_the_device_does_not_give_allows_no_discharge(
    monkeypatch, registers, reason
):
    real = sim_sunspec.models_of

    def models_of(*args: Any) -> list[dict[str, Any]]:
        models = real(*args)
        for model in models:
            if model["ID"] == 124:
                for name, raw in registers.items():
                    if raw is None:
                        del model[name]  # encoded as "not implemented"
                    else:
                        model[name] = raw
        return models

    monkeypatch.setattr(sim_sunspec, "models_of", models_of)
    simulator, source, pool = await _started(_plant(soc=50.0))
    try:
        control = StorageControl(source)
        result = await control.apply(-2000.0, time.time() + HOUR)
        assert result == Clamped(0.0, f"{reason}: no discharge, the reserve cannot be checked")
        assert _rates(simulator) == [[0, 0, 0, 60]]
        assert await control.apply(1000.0, time.time() + HOUR) == Applied(None)
    finally:
        pool.release(source.link)
        await simulator.stop()


def _link_drops_after_one_write(simulator: Simulator) -> None:
    """Every write after the next one fails, as if the link dropped between the two."""
    server = simulator.modbus
    write = server.write

    def once(address: int, words: list[int]) -> Any:
        result = write(address, words)
        server.refuse_writes = True
        return result

    server.write = once  # type: ignore[method-assign]


async def test_a_link_lost_while_going_autonomous_leaves_the_device_autonomous(sim):
    simulator, source = sim
    control = StorageControl(source)
    await control.apply(-2000.0, time.time() + HOUR)
    assert simulator.plant.mod == 3
    _link_drops_after_one_write(simulator)
    with pytest.raises(Exception, match="illegal data address"):
        await control.autonomous()
    # StorCtl_Mod 0 went first: autonomous already. (Rates first would have left StorCtl_Mod 3
    # with 100 % limits and no revert timer: under Modbus control with nothing to end it.)
    assert simulator.plant.mod == 0
    assert simulator.modbus.writes[-2] == (simulator.modbus.start_124 + 5, [0])


async def test_a_link_lost_while_taking_control_never_enables_old_rates(sim):
    simulator, source = sim
    # A device that kept the last forced rates (a 40 % discharge) when its timer reverted it.
    simulator.modbus.control |= {"OutWRte": 4000, "InWRte": -4000, "InOutWRte_RvrtTms": 0}
    control = StorageControl(source)
    _link_drops_after_one_write(simulator)
    result = await control.apply(1000.0, time.time() + HOUR)
    assert isinstance(result, Rejected) and "illegal data address" in result.reason
    # The new rates (with their timer) went first, StorCtl_Mod never became 3: autonomous.
    # (StorCtl_Mod first would have enabled the old forced discharge at 2000 W.)
    simulator.plant.step()
    assert simulator.plant.mod == 0 and simulator.plant.battery == -500.0  # the house, by itself
    assert simulator.modbus.writes[0] == (
        simulator.modbus.start_124 + 12,
        [0x10000 - 2000, 2000, 0, 60],
    )


async def test_the_core_sees_the_outcome_corrected_when_the_reserve_is_reached():
    port = free_port()
    plant = _plant()
    simulator = await Simulator(modbus_port=port, plant=plant).start()
    site = TestSite(
        {
            "fronius": ("trusted", ["trusted-extension"], []),
            "ctrl": ("untrusted", ["untrusted-agent"], []),
        }
    )
    config = {
        "host": "127.0.0.1",
        "solar_api": False,
        "modbus_port": port,
        "meter_unit": 0,
        "interval": "200ms",
        "revert_after": 2,  # a keep-alive rewrite every 0.67 s
    }
    try:
        site.start()
        ext = Extension(site.env("fronius", config))
        setup(ext)
        await ext.start()
        try:
            await until(lambda: simulator.modbus.writes, timeout=10)  # autonomous at start
            async with site.client("ctrl") as ctrl:
                sp = await until(lambda: ctrl.request_setpoint("fronius/P_ESS_set", -2000.0, 60))
                done = await ctrl.outcome(sp.id, timeout=10)
                assert (done.status, done.applied_value) == ("APPLIED", -2000.0)
                plant.soc = 5.0  # ran down below the reserve while the setpoint is in force

                async def status() -> Any:
                    return await ctrl.get_setpoint(id=sp.id)

                clamped = await until(
                    lambda: _when(status, lambda s: s.status == "CLAMPED"), timeout=10
                )
                assert (clamped.applied_value, clamped.reason) == (0.0, AT_RESERVE)
                # Held at 0 W under Modbus control (both rates 0), the timer restarted.
                assert _rates(simulator)[-1] == [0, 0, 0, 2] and plant.mod == 3
                plant.soc = 40.0  # charged again (by hand): the limit no longer binds
                again = await until(
                    lambda: _when(status, lambda s: s.status == "APPLIED"), timeout=10
                )
                assert (again.applied_value, again.reason) == (-2000.0, "")
        finally:
            await ext.stop()
    finally:
        site.close()
        await simulator.stop()


async def _when(get: Any, check: Any) -> Any:
    value = await get()
    return value if check(value) else None
