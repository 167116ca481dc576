"""SunSpec discovery and model reads against a real pymodbus server: a real SMA Sunny Boy 3.6
register dump, images made with pysunspec2's own encoder (int+SF and float models, nested
repeating groups), the smm Fronius 203 map against the official model 203, and the errors a
user sees when a device is not SunSpec, is cut short, or does not answer."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from sunspec2.device import Model

from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool, ModbusLinkError
from extensions.sdk.protocols.sunspec import (
    ModelLocation,
    SunSpecError,
    discover,
    read_model,
)
from extensions.sdk.protocols.sunspec_models import decode_model, fixed_points
from extensions.smm.config import ModbusMeterConfig
from extensions.smm.meter_maps import resolve_map
from extensions.smm.modbus_device import build_meters

from .images import FIXTURES, ImageServer, load_dump, model_headers, sunspec_image

pytestmark = pytest.mark.timeout(60)

SMA = FIXTURES / "modbus_schema_DeviceSMASunnyBoy36Dated20230810.regs.txt"


def _link(server: ImageServer, pool: LinkPool, timeout: float = 0.5):
    return pool.get(LinkConfig(host="127.0.0.1", port=server.port, response_timeout=timeout))


def _pysunspec2_reading(registers: list[int]) -> dict[str, Any]:
    """The same registers decoded by pysunspec2 itself (its device layer)."""
    data = b"".join(w.to_bytes(2, "big") for w in registers)
    model = Model(model_id=registers[0], model_len=registers[1], data=data)
    assert not model.error_info
    out = model.get_dict(computed=True)
    for key in ("mid", "error", "model_id"):
        out.pop(key)
    return out


def _same(ours: Any, theirs: Any, where: str = "") -> None:
    """Equal as a user reads them: numbers to float precision, pad points (ours leave them
    out) and accumulators at 0 (pysunspec2 reads 0 as "not implemented", we keep the 0)."""
    if isinstance(theirs, dict):
        for key, value in theirs.items():
            if key not in ours:
                assert key.startswith("Pad"), f"{where}.{key} missing"
                continue
            _same(ours[key], value, f"{where}.{key}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif theirs is None and ours == 0:
        pass
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, rel=1e-6), where
    else:
        assert ours == theirs, where


async def test_the_sma_sunny_boy_chain_is_found_and_every_model_reads_as_pysunspec2_reads_it():
    image = load_dump(SMA)
    pool = LinkPool()
    async with ImageServer(image, unit=3) as server:
        link = _link(server, pool)
        try:
            models = await discover(link, 3)
            # The chain the dump's author annotated, model by model.
            assert [(m.id, m.start) for m in models] == model_headers(SMA)
            assert all(isinstance(m, tuple) and len(m) == 3 for m in models)
            for model in models:
                ours = await read_model(link, 3, model)
                registers = [image[a] for a in range(model.start, model.end)]
                _same(ours, _pysunspec2_reading(registers), f"model {model.id}")
            by_id = {m.id: m for m in models}
            common = await read_model(link, 3, by_id[1])
            inverter = await read_model(link, 3, by_id[101])
            mppt = await read_model(link, 3, by_id[160])
        finally:
            pool.release(link)
    assert common["Mn"] == "SMA" and common["Md"] == "SB3.6-1AV-41"
    # A single-phase inverter: phase B and C are "not implemented", not zero.
    assert inverter["AphB"] is None and inverter["PhVphC"] is None
    assert 49.5 < inverter["Hz"] < 50.5
    # W and VA are in steps of 10 W (W_SF = 1): V * A agrees within that and the PF.
    apparent = inverter["PhVphA"] * inverter["AphA"]
    assert inverter["VA"] == pytest.approx(apparent, abs=15)
    assert inverter["W"] == pytest.approx(apparent * abs(inverter["PF"]), abs=15)
    # Two MPP trackers in use of the six the model lists; AC comes from DC with losses.
    assert mppt["N"] == len(mppt["module"]) == 6
    dc = sum(m["DCW"] for m in mppt["module"] if m["DCW"] is not None)
    assert 0.9 < inverter["W"] / dc < 1.0


@pytest.mark.parametrize("base", [0, 50000])
async def test_suns_is_also_found_at_the_other_base_addresses(base):
    dump = load_dump(SMA)
    image = {a - 40000 + base: w for a, w in dump.items()}
    pool = LinkPool()
    async with ImageServer(image) as server:
        link = _link(server, pool)
        try:
            models = await discover(link, 1)
        finally:
            pool.release(link)
    assert models[0] == ModelLocation(1, base + 2, 66)
    assert [m.id for m in models] == [i for i, _ in model_headers(SMA)]


async def test_float_models_and_not_implemented_values():
    # A three-phase float inverter (113) and a float meter (213), encoded by pysunspec2.
    inverter = {"ID": 113, "L": 60, "W": 4321.5, "Hz": 50.01, "PhVphA": 230.25, "PF": -98.5}
    meter = {"ID": 213, "L": 124, "W": -1234.5, "TotWhImp": 123456.0, "TotWhExp": 0.0}
    common = {"ID": 1, "L": 66, "Mn": "Fronius", "Md": "Symo GEN24 10.0 Plus", "SN": "12345"}
    pool = LinkPool()
    async with ImageServer(sunspec_image([common, inverter, meter])) as server:
        link = _link(server, pool)
        try:
            models = await discover(link, 1)
            got = {m.id: await read_model(link, 1, m) for m in models}
        finally:
            pool.release(link)
    assert [m.id for m in models] == [1, 113, 213]
    assert got[1]["Md"] == "Symo GEN24 10.0 Plus"
    for values in (inverter, meter):
        for name, value in values.items():
            assert got[values["ID"]][name] == pytest.approx(value)
    # What the device left out (NaN in a float model) is None, not NaN or a huge number.
    assert got[113]["PhVphB"] is None and got[213]["VAR"] is None
    assert not any(isinstance(v, float) and math.isnan(v) for v in got[113].values())


async def test_nested_repeating_groups_follow_their_count_points():
    device = json.loads((FIXTURES / "inverter_123.json").read_text())
    common, lvrtd = device["models"]
    pool = LinkPool()
    async with ImageServer(sunspec_image([common, lvrtd])) as server:
        link = _link(server, pool)
        try:
            models = await discover(link, 1)
            got = await read_model(link, 1, models[1])
        finally:
            pool.release(link)
    assert models[1] == ModelLocation(129, 40002 + 2 + common["L"], lvrtd["L"])
    assert len(got["curve"]) == lvrtd["NCrv"] == 4
    first = lvrtd["curve"][0]
    # Tms1 = 200 with Tms_SF = -2: 2.00 s; V1 = 880 with V_SF = -1: 88.0 % of nominal.
    assert got["curve"][0]["Tms1"] == first["Tms1"] * 10.0 ** lvrtd["Tms_SF"]
    assert got["curve"][0]["V1"] == first["V1"] * 10.0 ** lvrtd["V_SF"]
    assert got["curve"][0]["Tms11"] is None  # not implemented in the device's data


# -- the Fronius Smart Meter map of smm against the official model 203 -------------------------

# smm vocabulary -> SunSpec model 203 point (the meaning, from the model's labels).
SMM_TO_203 = {
    "I1": "AphA",
    "U1": "PhVphA",
    "f": "Hz",
    "P": "W",
    "P3": "WphC",
    "S": "VA",
    "Q": "VAR",
    "PF": "PF",
    "Am": "TotWhExp",
    "Ap": "TotWhImp",
}


async def test_smm_fronius_203_map_sits_where_discovery_finds_model_203():
    common = {"ID": 1, "L": 65, "Mn": "Fronius", "Md": "Smart Meter 63A"}  # Fronius: L = 65
    meter = {
        "ID": 203,
        "L": 105,
        "AphA": 1234,
        "A_SF": -2,
        "PhVphA": 2305,
        "V_SF": -1,
        "Hz": 5001,
        "Hz_SF": -2,
        "W": -4321,
        "WphC": -1400,
        "W_SF": 0,
        "VA": 4333,
        "VA_SF": 0,
        "VAR": 321,
        "VAR_SF": 0,
        "PF": -98,
        "PF_SF": 0,
        "TotWhExp": 98765432,
        "TotWhImp": 1234567,
        "TotWh_SF": 0,
    }
    register_map = resolve_map("fronius_smart_meter_203")
    pool = LinkPool()
    async with ImageServer(sunspec_image([common, meter]), unit=240) as server:
        link = _link(server, pool)
        try:
            models = await discover(link, 240)
            sunspec = await read_model(link, 240, models[1])
            (smm_meter,) = build_meters(
                [
                    ModbusMeterConfig(
                        device="grid",
                        map="fronius_smart_meter_203",
                        unit=240,
                        host="127.0.0.1",
                        port=server.port,
                    )
                ],
                pool,
            )
            readings = await smm_meter.poll()
            await smm_meter.close()
        finally:
            pool.release(link)
    assert models[1] == ModelLocation(203, 40069, 105)  # where Fronius documents it
    points = fixed_points(203)
    for ours, theirs in SMM_TO_203.items():
        mapped, defined = register_map.points[ours], points[theirs]
        assert mapped.address == models[1].start + defined.offset, ours
        assert mapped.scale_register == models[1].start + points[str(defined.sf)].offset, ours
    # The same device read both ways: smm's map (vocabulary units) and the SunSpec model.
    assert readings["grid/P"].value == pytest.approx(sunspec["W"])
    assert readings["grid/U1"].value == pytest.approx(sunspec["PhVphA"])
    assert readings["grid/PF"].value == pytest.approx(sunspec["PF"] / 100)  # % in model 203
    assert readings["grid/Ap"].value == pytest.approx(sunspec["TotWhImp"] / 1000)  # kWh
    assert "grid/U2" not in readings and sunspec["PhVphB"] is None  # not implemented


# -- what a user sees when it is not a (complete) SunSpec device --------------------------------


async def test_a_device_without_suns_is_named_with_what_was_found():
    pool = LinkPool()
    async with ImageServer({a: 0x1234 for a in range(40000, 40010)}) as server:
        link = _link(server, pool)
        try:
            with pytest.raises(SunSpecError) as err:
                await discover(link, 1)
        finally:
            pool.release(link)
    text = str(err.value)
    assert "no 'SunS' marker at 40000, 0, 50000" in text
    assert "40000: 0x1234 0x1234" in text and "0: exception 2" in text
    assert f"127.0.0.1:{server.port}" in text


async def test_a_chain_cut_short_says_where_it_broke():
    image = load_dump(SMA)
    headers = model_headers(SMA)
    cut = headers[5][1]  # everything from the sixth model's header on is gone
    image = {a: w for a, w in image.items() if a < cut}
    pool = LinkPool()
    async with ImageServer(image) as server:
        link = _link(server, pool)
        try:
            with pytest.raises(SunSpecError, match=f"chain broken at {cut}") as err:
                await discover(link, 1)
        finally:
            pool.release(link)
    assert f"after model {headers[4][0]} at {headers[4][1]}" in str(err.value)


async def test_a_silent_unit_is_a_link_error_after_one_timeout_per_base():
    pool = LinkPool()
    async with ImageServer(load_dump(SMA), unit=1) as server:
        link = _link(server, pool, timeout=0.2)
        try:
            t0 = time.monotonic()
            with pytest.raises(ModbusLinkError, match="no answer from unit 9"):
                await discover(link, 9)
            assert time.monotonic() - t0 < 3 * 0.2 + 0.5
        finally:
            pool.release(link)


def test_decode_refuses_registers_that_do_not_fit_the_model():
    with pytest.raises(SunSpecError, match="L = 50 but only 10"):
        decode_model([101, 50] + [0] * 10)
    with pytest.raises(SunSpecError, match="no SunSpec definition of model 64999"):
        decode_model([64999, 2, 0, 0])
    # A repeating group that does not fill the model's length exactly.
    with pytest.raises(SunSpecError, match="left over"):
        decode_model([160, 8 + 20 + 3] + [0] * 31)
