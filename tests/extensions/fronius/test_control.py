"""Battery control through model 124 against the simulator's real pymodbus server: the
registers written (exactly), clamping to the device's limits, the read-back check, the revert
timer, keep-alive rewrites, and autonomous mode restored."""

from __future__ import annotations

import asyncio
import time

import pytest

from extensions.fronius.control import Limits, StorageControl, plan, rate_word
from extensions.fronius.sim_plant import Plant
from extensions.fronius.simulator import Simulator
from extensions.fronius.sunspec_source import SunSpecSource
from extensions.sdk import Applied, Clamped, Rejected
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool
from extensions.sdk.testing import free_port, until
from tests.extensions.sdk_protocols.images import ImageServer, load_dump, sunspec_image

from .recordings import FIXTURES

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits(w_cha_max=5000, max_charge=4000, max_discharge=5000, rate_sf=-2, reserve=10, soc=50)
HOUR = time.time() + 3600


def test_plan_clamps_to_the_limits_and_rounds_to_the_register_step():
    p = plan(2000, LIMITS)
    assert (p.power, p.reason, p.mod) == (2000, "", 3)
    assert (p.in_word, p.out_word) == (4000, (-4000) & 0xFFFF)  # 40.00 % of WChaMax each way
    assert plan(4500, LIMITS).power == 4000  # model 120's MaxChaRte
    assert plan(4500, LIMITS).reason == "charge limit 4000 W"
    assert plan(-9000, LIMITS).power == -5000
    empty = Limits(**{**LIMITS.__dict__, "soc": 10.0})
    assert plan(-100, empty).power == 0 and "reserve 10 %" in plan(-100, empty).reason
    assert plan(100, empty).power == 100  # charging an empty battery is fine
    full = Limits(**{**LIMITS.__dict__, "soc": 100.0})
    assert plan(100, full).power == 0 and plan(100, full).reason == "battery full"
    assert plan(1.234, LIMITS).power == pytest.approx(1.0)  # 0.01 % of 5000 W = 0.5 W steps
    assert rate_word(100, -2) == 10000 and rate_word(-100, -2) == 0x10000 - 10000
    assert rate_word(1000, -2) == 32767  # never the "not implemented" 0x8000


@pytest.fixture
async def sim():
    port = free_port()
    simulator = await Simulator(modbus_port=port, plant=Plant(pv_w=3000, load_w=1000)).start()
    pool = LinkPool()
    link = pool.get(LinkConfig(host="127.0.0.1", port=port, response_timeout=0.5))
    source = SunSpecSource(link, 1, 200)
    try:
        yield simulator, source
    finally:
        pool.release(link)
        await simulator.stop()


async def test_a_discharge_is_written_exactly_read_back_and_followed(sim):
    simulator, source = sim
    control = StorageControl(source, revert_after=60)
    result = await control.apply(-2000.0, time.time() + 30)
    assert result == Applied(None)
    start = simulator.modbus.start_124
    assert start == 40149  # 'SunS', model 1 (L 65), model 103 (L 50), model 120 (L 26)
    # OutWRte 40.00 %, InWRte -40.00 %, WinTms 0, RvrtTms 30 s (the setpoint's validity, less
    # than revert_after), then StorCtl_Mod = charge and discharge limits on.
    assert simulator.modbus.writes == [(start + 12, [4000, 61536, 0, 30]), (start + 5, [3])]
    simulator.plant.step()
    assert simulator.plant.battery == -2000.0 and simulator.plant.revert_s == 30
    inverter, _ = await source.read()
    assert inverter["P_ESS"] == -2000.0  # discharging: < 0 in the load reference


async def test_a_request_beyond_the_limits_is_clamped(sim):
    simulator, source = sim
    control = StorageControl(source)
    assert await control.apply(9000.0, HOUR) == Clamped(5000.0, "charge limit 5000 W")
    simulator.plant.step()
    assert simulator.plant.battery == 5000.0
    simulator.plant.soc = 10.0  # at the reserve
    result = await control.apply(-1000.0, HOUR)
    assert result == Clamped(0.0, "SoC 10 % at or below the reserve 10 %")
    simulator.plant.step()
    assert simulator.plant.battery == 0.0


async def test_writes_that_do_not_read_back_are_rejected_and_autonomy_restored(sim):
    simulator, source = sim
    control = StorageControl(source)
    simulator.modbus.ignore_writes = True
    result = await control.apply(1000.0, HOUR)
    assert isinstance(result, Rejected)
    assert "the device did not take them" in result.reason
    simulator.modbus.ignore_writes = False
    simulator.modbus.refuse_writes = True
    result = await control.apply(1000.0, HOUR)
    assert isinstance(result, Rejected) and "exception 2 (illegal data address)" in result.reason
    assert control.active is None


async def test_expiry_restores_autonomous_mode_explicitly(sim):
    simulator, source = sim
    control = StorageControl(source)
    await control.apply(-2000.0, HOUR)
    simulator.modbus.writes.clear()
    await control.autonomous()
    start = simulator.modbus.start_124
    # StorCtl_Mod 0 first (autonomous at once, whatever happens next), then the rates at 100 %.
    assert simulator.modbus.writes == [(start + 5, [0]), (start + 12, [10000, 10000, 0, 0])]
    simulator.plant.step()
    assert simulator.plant.mod == 0 and simulator.plant.battery == 2000.0  # PV surplus again


async def test_the_device_reverts_by_itself_when_we_go_silent(sim):
    simulator, source = sim
    clock = [0.0]
    simulator.plant.clock = lambda: clock[0]
    control = StorageControl(source, revert_after=5)
    await control.apply(-2000.0, HOUR)
    clock[0] = 4.0
    simulator.plant.step()
    assert simulator.plant.battery == -2000.0
    clock[0] = 5.5  # nobody rewrote the rates within InOutWRte_RvrtTms
    inverter, _ = await source.read()
    assert simulator.plant.mod == 0 and simulator.plant.reverts == 1
    assert inverter["P_ESS"] == 2000.0


async def test_keep_alive_rewrites_the_rates_before_the_timer_ends(sim):
    simulator, source = sim
    control = StorageControl(source, revert_after=2)
    await control.apply(-1500.0, time.time() + 30)
    task = asyncio.create_task(control.keep_alive())
    try:
        await until(lambda: control.writes >= 3, timeout=5)
    finally:
        task.cancel()
    assert simulator.plant.reverts == 0 and simulator.plant.battery == -1500.0
    rates = [w for a, w in simulator.modbus.writes if a == simulator.modbus.start_124 + 12]
    assert rates[-1] == [3000, (-3000) & 0xFFFF, 0, 2]


async def test_no_battery_to_control_is_a_clear_rejection():
    image = load_dump(FIXTURES / "sma_sunny_boy_36" / "registers.regs.txt")
    pool = LinkPool()
    async with ImageServer(image, unit=3) as server:
        link = pool.get(LinkConfig(host="127.0.0.1", port=server.port, response_timeout=0.5))
        try:
            result = await StorageControl(SunSpecSource(link, 3)).apply(1000.0, HOUR)
        finally:
            pool.release(link)
    assert result == Rejected("model 124 gives no usable WChaMax (None)")


async def test_an_inverter_without_a_battery_rejects_setpoints_and_has_nothing_to_restore():
    image = sunspec_image([{"ID": 1, "L": 66}, {"ID": 103, "L": 50, "W": 1000, "W_SF": 0}])
    pool = LinkPool()
    async with ImageServer(image) as server:
        link = pool.get(LinkConfig(host="127.0.0.1", port=server.port, response_timeout=0.5))
        try:
            control = StorageControl(SunSpecSource(link, 1))
            result = await control.apply(1000.0, HOUR)
            await control.autonomous()  # at start and on expiry: no write, no error
        finally:
            pool.release(link)
    assert isinstance(result, Rejected)
    assert result.reason.startswith("unit 1 has no SunSpec storage model 124 (models [1, 103])")
