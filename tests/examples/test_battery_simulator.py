"""The example battery's simulator (what `smx demo` runs) behaves like a battery, tick after tick,
through its wire protocol: the power it runs at stays within +-5 kW, the state of charge is the
integral of that power over the 10 kWh capacity and stays within 0..100 %, the reported state
agrees with the sign of P (load reference: > 0 charging), and a full battery takes no charge nor
an empty one gives any (the accepted power says so, so the extension reports CLAMPED)."""

from __future__ import annotations

import asyncio

import pytest

from examples.battery.protocol import decode, encode
from examples.battery.simulator import CAPACITY_WH, MAX_W, Battery, serve
from extensions.sdk.testing import free_port


class Clock:
    """Simulated time, so that hours of battery life take no time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ask(battery: Battery, **request: object) -> dict:
    """One request through the wire format, as the extension sends it."""
    return decode(encode(battery.handle(decode(encode(request)))))


def test_state_of_charge_is_the_integral_of_power_over_many_ticks():
    clock = Clock()
    battery = Battery(soc=50.0, clock=clock)
    plan = [3000.0, -2000.0, 8000.0, -9000.0, 0.0, 4500.0]  # the demo's plan and beyond
    energy_wh = 0.0  # what went in (> 0) or out, by the powers the battery reported
    soc0 = ask(battery, op="read")["SoC"]
    stopped_full = 0
    for tick in range(6 * 3600):  # six hours, one read a second
        if tick % 600 == 0:
            requested = plan[(tick // 600) % len(plan)]
            accepted = ask(battery, op="set", P=requested)["P"]
            assert abs(accepted) <= MAX_W
            assert accepted == max(-MAX_W, min(MAX_W, requested)) or accepted == 0.0
        before = ask(battery, op="read")
        clock.now += 1.0
        after = ask(battery, op="read")
        assert -MAX_W <= after["P"] <= MAX_W
        assert 0.0 <= after["SoC"] <= 100.0
        assert after["state"] == (
            "CHARGING" if after["P"] > 0 else "DISCHARGING" if after["P"] < 0 else "STANDBY"
        )
        if after["P"] == before["P"]:  # ran the whole second at that power
            energy_wh += before["P"] / 3600
        else:  # stopped by its BMS within the second: at a limit
            assert after["P"] == 0.0 and after["SoC"] in (0.0, 100.0)
            energy_wh += (after["SoC"] - before["SoC"]) / 100 * CAPACITY_WH
            stopped_full += after["SoC"] == 100.0
    assert stopped_full  # the plan charges more than it discharges: it filled up on the way
    soc = ask(battery, op="read")["SoC"]
    assert soc == pytest.approx(soc0 + energy_wh / CAPACITY_WH * 100, abs=0.01)


def test_a_full_battery_takes_no_charge_and_an_empty_one_gives_none():
    clock = Clock()
    battery = Battery(soc=99.9, clock=clock)
    assert ask(battery, op="set", P=5000.0)["P"] == 5000.0
    clock.now += 3600.0  # 5 kWh offered, 10 Wh of room
    full = ask(battery, op="read")
    assert full == {"P": 0.0, "SoC": 100.0, "state": "STANDBY"}
    assert ask(battery, op="set", P=3000.0)["P"] == 0.0  # full: nothing accepted
    assert ask(battery, op="set", P=-3000.0)["P"] == -3000.0  # but it can discharge
    clock.now += 4 * 3600.0  # 12 kWh asked of 10 kWh
    assert ask(battery, op="read") == {"P": 0.0, "SoC": 0.0, "state": "STANDBY"}
    assert ask(battery, op="set", P=-1000.0)["P"] == 0.0  # empty: nothing given
    assert ask(battery, op="set", P=1000.0)["P"] == 1000.0


async def test_the_simulator_process_serves_the_protocol_and_stops_cleanly():
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(serve("127.0.0.1", port, stop))
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.02)
    writer.write(encode({"op": "set", "P": 12000.0}))
    await writer.drain()
    assert decode(await reader.readline()) == {"P": MAX_W}
    writer.write(encode({"op": "read"}))
    await writer.drain()
    reply = decode(await reader.readline())
    assert reply["P"] == MAX_W and reply["state"] == "CHARGING"
    stop.set()  # what SIGTERM does: the server ends with a client still connected
    async with asyncio.timeout(5):
        await server
    assert await reader.readline() == b""
    writer.close()
