"""Modbus meters against real pymodbus servers (the smm simulator): Modbus TCP on 127.0.0.1 and
RTU through a socat pty pair. Checked values for every shipped map, a user map from config, a
dead meter on a shared bus, Modbus exceptions, and the whole thing through a real core."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from extensions.sdk import Extension, SetupError
from extensions.sdk.devices import DeviceState, poll_forever
from extensions.sdk.protocols.modbus_link import LinkPool, ModbusLinkError
from extensions.sdk.testing import TestSite, free_port, until
from extensions.smm.config import ModbusMeterConfig as Entry
from extensions.smm.meter_maps import resolve_map
from extensions.smm.modbus_device import ModbusMeter, build_meters
from extensions.smm.modbus_simulator import BusSimulator, SimMeter
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.extensions.sdk_protocols.ptys import socat_pair

pytestmark = pytest.mark.timeout(60)

# What each simulated meter shows (secondary values, docs/DATA-MODEL.md units and signs: the PCC
# exports 2.5 kW, so P < 0), and the unit ids they answer on.
KNOWN = {
    "eastron_sdm630": (
        1,
        {
            "U1": 230.1,
            "U2": 231.2,
            "U3": 229.8,
            "I1": 3.5,
            "I2": 3.25,
            "I3": 4.0,
            "P1": -800.0,
            "P2": -900.0,
            "P3": -800.0,
            "P": -2500.0,
            "Q": 120.5,
            "S": 2600.0,
            "PF": -0.96,
            "f": 49.98,
            "Ap": 12345.67,
            "Am": 2345.5,
            "Rp": 10.25,
            "Rm": 20.5,
        },
    ),
    "eastron_sdm120": (
        2,
        {
            "U": 231.0,
            "I": 5.5,
            "P": 1200.0,
            "Q": -50.0,
            "S": 1210.0,
            "PF": 0.99,
            "f": 50.02,
            "Ap": 987.6,
            "Am": 0.0,
            "Rp": 1.5,
            "Rm": 2.5,
        },
    ),
    "carlogavazzi_em24": (
        3,
        {
            "U1": 230.1,
            "U2": 230.2,
            "U3": 230.3,
            "I1": 1.234,
            "I2": 2.345,
            "I3": 3.456,
            "P1": -123.4,
            "P2": 234.5,
            "P3": 345.6,
            "P": 456.7,
            "PF1": 0.95,
            "PF": -0.97,
            "f": 50.1,
            "Ap": 123456.7,
            "Am": 765.4,
        },
    ),
    "carlogavazzi_em340": (
        4,
        {
            "U1": 229.9,
            "U2": 230.0,
            "U3": 230.1,
            "I1": 10.5,
            "I2": 0.25,
            "I3": 7.0,
            "P1": 2400.0,
            "P2": -57.5,
            "P3": 1600.0,
            "P": 3942.5,
            "PF": 0.995,
            "f": 49.9,
            "Ap": 42.0,
            "Am": 4242.4,
        },
    ),
    "fronius_smart_meter_203": (
        240,
        {
            "I1": 12.34,
            "I2": 1.23,
            "I3": 0.5,
            "U1": 230.5,
            "U2": 231.0,
            "U3": 229.5,
            "f": 50.01,
            "P": -4321.0,
            "P1": -1500.0,
            "P2": -1421.0,
            "P3": -1400.0,
            "Q": 321.0,
            "S": 4333.0,
            "PF": -0.98,
            "Ap": 1234.567,
            "Am": 98765.432,
        },
    ),
}


@pytest.fixture
def pty_pair(tmp_path):
    """Two linked pseudo-terminals: the simulator on one end, the reader on the other."""
    with socat_pair(tmp_path) as pair:
        yield pair


def sim_of(*names: str, live: bool = False) -> BusSimulator:
    meters = []
    for name in names:
        unit, values = KNOWN[name]
        meters.append(SimMeter(unit, resolve_map(name), live=live, values=dict(values)))
    return BusSimulator(meters)


def check(readings: dict, device: str, expected: dict) -> None:
    got = {name.split("/", 1)[1]: r.value for name, r in readings.items()}
    for point, value in expected.items():
        assert got[point] == pytest.approx(value, rel=1e-6, abs=1e-6), (device, point)
    assert all(r.quality == "GOOD" for r in readings.values())


@pytest.mark.parametrize("name", list(KNOWN))
async def test_every_shipped_map_reads_checked_values_over_tcp(name):
    unit, expected = KNOWN[name]
    sim = sim_of(name)
    port = free_port()
    await sim.start_tcp("127.0.0.1", port)
    pool = LinkPool()
    (meter,) = build_meters(
        [Entry(device="m1", map=name, unit=unit, host="127.0.0.1", port=port)], pool
    )
    try:
        check(await meter.poll(), name, expected)
        assert sim.meters[unit].reads == len(meter.map.blocks)  # the planned requests, no more
        specs = {s.name: s for s in meter.specs()}
        assert specs["m1/P"].unit == "W" and specs["m1/Ap"].unit == "kWh"
        assert specs["m1/Ap"].index_max == meter.map.index_max
    finally:
        await meter.close()
        await sim.stop()


async def test_all_maps_on_one_rtu_bus_through_a_pty(pty_pair):
    sim_end, reader_end = pty_pair
    sim = sim_of(*KNOWN)
    await sim.start_rtu(sim_end, 19200)
    entries = [
        Entry(device=f"m{unit}", map=name, unit=unit, serial=reader_end, baudrate=19200)
        for name, (unit, _) in KNOWN.items()
    ]
    pool = LinkPool()
    meters = build_meters(entries, pool)
    try:
        assert len(pool.links) == 1  # one client for the whole line
        assert meters[0].bus == meters[-1].bus and meters[0].bus_gap == pytest.approx(
            3.5 * 10 / 19200
        )
        for meter, (name, (_, expected)) in zip(meters, KNOWN.items(), strict=True):
            check(await meter.poll(), name, expected)
    finally:
        for m in meters:
            await m.close()
        await sim.stop()
    assert not pool.links  # the last meter closed the client


async def test_ratios_scale_to_primary_values():
    sim = sim_of("eastron_sdm630")
    port = free_port()
    await sim.start_tcp("127.0.0.1", port)
    entry = Entry(
        device="smm",
        map="eastron_sdm630",
        unit=1,
        host="127.0.0.1",
        port=port,
        ct=40.0,
        vt=1.0,
        index_max=999999.99,
    )
    (meter,) = build_meters([entry])
    try:
        got = await meter.poll()
        assert got["smm/P"].value == pytest.approx(-2500.0 * 40)
        assert got["smm/I1"].value == pytest.approx(3.5 * 40)
        assert got["smm/U1"].value == pytest.approx(230.1, rel=1e-6)
        assert meter.meter.index_max == 999999.99
    finally:
        await meter.close()
        await sim.stop()


async def test_user_map_from_config_by_path(tmp_path):
    (tmp_path / "acme.toml").write_text(
        '# Acme test meter\n[meter]\nname = "Acme"\nfunction = 3\nword_order = "little"\n'
        "phases = 1\n[points]\n"
        'P = { address = 10, type = "int32", scale = 0.1, sign = -1 }  # generator reference\n'
        'U = { address = 12, type = "uint16", scale = 0.1 }\n'
        'Ap = { address = 20, type = "uint64", scale = 0.001 }\n'
    )
    user_map = resolve_map("acme.toml", base_dir=tmp_path)
    sim = BusSimulator(
        [SimMeter(7, user_map, live=False, values={"P": 1500.5, "U": 230.4, "Ap": 123456789.123})]
    )
    port = free_port()
    await sim.start_tcp("127.0.0.1", port)
    entry = Entry(device="acme", map="acme.toml", unit=7, host="127.0.0.1", port=port)
    (meter,) = build_meters([entry], base_dir=tmp_path)
    try:
        got = await meter.poll()
        assert got["acme/P"].value == pytest.approx(1500.5)
        assert got["acme/Ap"].value == pytest.approx(123456789.123)
        # The wire carries the device's own sign: -15005 as a word-swapped int32.
        assert sim.meters[7].registers[10] == (-15005) & 0xFFFF
    finally:
        await meter.close()
        await sim.stop()


async def test_modbus_exception_and_no_answer_are_clear_errors():
    sim = sim_of("carlogavazzi_em24")  # unit 3 serves the EM24's registers only
    port = free_port()
    await sim.start_tcp("127.0.0.1", port)
    pool = LinkPool()
    base: dict[str, Any] = {"host": "127.0.0.1", "port": port, "response_timeout": 0.2}
    wrong, dead = build_meters(
        [
            Entry(**base, device="wrong", map="eastron_sdm630", unit=3),
            Entry(**base, device="dead", map="carlogavazzi_em24", unit=9),
        ],
        pool,
    )
    try:
        with pytest.raises(ModbusLinkError, match=r"exception 2 \(illegal data address\)"):
            await wrong.poll()
        t0 = time.monotonic()
        with pytest.raises(ModbusLinkError, match="no answer from unit 9 .* within 0.2 s"):
            await dead.poll()
        assert time.monotonic() - t0 < 0.6  # one timeout, no retries
    finally:
        await wrong.close()
        await dead.close()
        await sim.stop()


def test_what_the_schema_cannot_check_is_refused_naming_the_key():
    key = "extensions.smm.config.modbus"
    with pytest.raises(SetupError) as err:
        build_meters([Entry(device="x", map="eastron_sdm630", unit=1)])
    assert str(err.value).startswith(f"{key}[0]: give either serial (RTU) or host (TCP)")
    with pytest.raises(SetupError) as err:
        build_meters([Entry(device=d, map="eastron_sdm630", unit=1, host="h") for d in "xy"])
    assert str(err.value) == f"{key}[1].unit: tcp:h:502 unit 1 is already device 'x'"
    with pytest.raises(SetupError) as err:
        build_meters(
            [
                Entry(device="x", map="eastron_sdm630", unit=1, serial="/x", baudrate=9600),
                Entry(device="y", map="eastron_sdm630", unit=2, serial="/x", baudrate=19200),
            ]
        )
    assert str(err.value).startswith(f"{key}[1]: rtu:/x: devices on one line must share")


async def test_a_dead_meter_never_slows_the_others_on_one_rtu_bus(pty_pair):
    sim_end, reader_end = pty_pair
    sim = sim_of("eastron_sdm630", "eastron_sdm120", "carlogavazzi_em24", live=True)
    await sim.start_rtu(sim_end, 9600)
    base: dict[str, Any] = {
        "serial": reader_end,
        "baudrate": 9600,
        "response_timeout": 0.3,
        "max_backoff": 2.0,
    }
    pool = LinkPool()
    meters = build_meters(
        [
            Entry(**base, device="a", map="eastron_sdm630", unit=1),
            Entry(**base, device="b", map="eastron_sdm120", unit=2),
            Entry(**base, device="c", map="carlogavazzi_em24", unit=3),
            Entry(**base, device="dead", map="eastron_sdm630", unit=17),
        ],
        pool,
    )
    starts: dict[str, list[float]] = {m.name: [] for m in meters}
    published: dict[str, tuple] = {}

    def publish(name, value, quality, when):
        published[name] = (value, quality)

    class Timed:  # record each poll start of the live meters
        def __init__(self, meter):
            self.meter = meter

        async def __call__(self):
            starts[self.meter.name].append(time.monotonic())
            return await self.meter.poll_inner()

    states = {m.name: DeviceState() for m in meters}
    for m in meters:
        m.poll_inner = m.poll
        m.poll = Timed(m)
    tasks = [asyncio.create_task(poll_forever(m, states[m.name], publish)) for m in meters]
    try:
        await asyncio.sleep(4.2)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in meters:
            await m.close()
        await sim.stop()
    for name in ("a", "b", "c"):
        s = starts[name]
        assert len(s) >= 4, (name, len(s))
        gaps = [b - a for a, b in zip(s, s[1:], strict=False)]
        assert max(gaps) < 1.35, (name, gaps)  # the 1 s cycle holds
        assert states[name].ok and states[name].failures == 0
    dead = states["dead"]
    assert not dead.ok and dead.failures >= 2
    assert "no answer from unit 17" in dead.last_error
    assert len(starts["dead"]) <= 4  # backed off: 1 s, 2 s, 2 s ...
    assert published["a/P"][1] == "GOOD"


async def test_live_values_change():
    m = resolve_map("eastron_sdm630")
    sim = BusSimulator([SimMeter(1, m, live=True)])
    port = free_port()
    await sim.start_tcp("127.0.0.1", port)
    (meter,) = build_meters(
        [Entry(device="s", map="eastron_sdm630", unit=1, host="127.0.0.1", port=port)]
    )
    try:
        first = (await meter.poll())["s/P"].value
        await asyncio.sleep(0.5)
        second = (await meter.poll())["s/P"].value
        assert first != second and 1900 < first < 2700  # a house: 2.3 kW +- 370 W
    finally:
        await meter.close()
        await sim.stop()


async def _points(site, *names):
    resp = await site.stubs("admin").points.GetPoints(spb.GetPointsRequest(names=list(names)))
    return {p.name: p for p in resp.points}


async def test_through_a_real_core_points_units_and_a_dead_meter_turning_bad(pty_pair):
    sim_end, reader_end = pty_pair
    sim = sim_of("eastron_sdm630", "carlogavazzi_em24")
    await sim.start_rtu(sim_end, 19200)
    base: dict[str, Any] = {
        "serial": reader_end,
        "baudrate": 19200,
        "response_timeout": 0.2,
        "max_backoff": 1,
    }
    # The core lets a client write only its own device's points ({name}/**) unless the site
    # file grants more; TestSite has no site file, so each meter gets its own extension here.
    # Both share one line (one client from one pool) and the SDK's bus lock.
    clients = {n: ("trusted", ["trusted-extension"], []) for n in ("smm", "em24")}
    with TestSite(clients) as site:
        meters = build_meters(
            [
                Entry(**base, device="smm", map="eastron_sdm630", unit=1),
                Entry(**base, device="em24", map="carlogavazzi_em24", unit=3),
            ]
        )
        exts = []
        for m in meters:
            e = Extension(site.env(m.name))
            e.declare(m.specs())
            e.add_device(m)
            exts.append(e)
        ext, ext_em24 = exts
        await ext_em24.start()
        await ext.start()
        try:
            got = await until(lambda: _points(site, "smm/P", "em24/P", "smm/Ap"))
            assert got["smm/P"].value.double_value == pytest.approx(-2500.0)
            assert got["smm/P"].quality == ppb.QUALITY_GOOD
            assert got["em24/P"].value.double_value == pytest.approx(456.7)
            listed = await site.stubs("admin").points.ListPoints(
                spb.ListPointsRequest(pattern="smm/*")
            )
            units = {p.name: p.unit for p in listed.points}
            assert units["smm/P"] == "W" and units["smm/Ap"] == "kWh" and units["smm/f"] == "Hz"
            sim.silent.add(3)  # the EM24 dies
            bad = await until(lambda: _bad(site, "em24/P"), timeout=5)
            assert bad["em24/P"].value.double_value == pytest.approx(456.7)  # last good value
            sim.set_values(1, {"P": 1000.0})
            await until(
                lambda: _value_is(site, "smm/P", 1000.0), timeout=5
            )  # the live meter goes on
            assert ext.health()["state"] == "running"
            health = ext_em24.health()
            assert health["state"] == "degraded" and "no answer from unit 3" in health["last_error"]
        finally:
            await ext.stop()
            await ext_em24.stop()
            await sim.stop()


async def _bad(site, name):
    got = await _points(site, name)
    return got if got[name].quality == ppb.QUALITY_BAD else None


async def _value_is(site, name, value):
    got = await _points(site, name)
    return got[name].value.double_value == pytest.approx(value)


def test_meter_modules_do_not_import_the_core():
    root = Path(__file__).resolve().parents[3] / "extensions" / "smm"
    for f in ("modbus_device.py", "meter_maps.py", "modbus_simulator.py"):
        assert "trusted" not in (root / f).read_text().split('"""', 2)[2].split("__all__")[0]


def test_modbus_meter_is_an_sdk_device():
    from extensions.sdk import Device

    assert issubclass(ModbusMeter, Device)
