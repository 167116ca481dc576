"""SunSpec register images decode to the right models and points (the SDK's SunSpec code and
the fronius mapping, against a real pymodbus server), and the Solar API and SunSpec readings of
one device agree on sign and unit."""

from __future__ import annotations

import json
import tomllib

import pytest

from extensions.fronius import solar_points, sunspec_points
from extensions.fronius.solar_api import parse_response
from extensions.fronius.sunspec_source import SunSpecSource
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool
from extensions.sdk.protocols.sunspec import SunSpecError
from extensions.sdk.protocols.sunspec_models import decode_model
from smx.vocabulary import lookup
from tests.extensions.sdk_protocols.images import ImageServer, load_dump, sunspec_image

from .recordings import FIXTURES

pytestmark = pytest.mark.timeout(60)

SMA = FIXTURES / "sma_sunny_boy_36"
GEN24 = FIXTURES / "gen24_plus_byd"


async def _read(image, unit=1, meter_unit=0, units=None):
    pool = LinkPool()
    async with ImageServer(image, unit=unit) as server:
        link = pool.get(LinkConfig(host="127.0.0.1", port=server.port, response_timeout=0.5))
        source = SunSpecSource(link, unit, meter_unit)
        try:
            inverter, meter = await source.read()
        finally:
            pool.release(link)
    return source, inverter, meter


async def test_the_sma_image_decodes_to_its_snapshot():
    with open(SMA / "expected.toml", "rb") as f:
        want = tomllib.load(f)
    source, inverter, meter = await _read(load_dump(SMA / "registers.regs.txt"), unit=3)
    assert source.models is not None
    assert list(source.models) == want["models"]
    assert inverter.keys() == want["points"].keys()
    for name, fields in want["points"].items():
        assert inverter[name] == pytest.approx(fields["value"]), name
        assert lookup(name).unit == fields["unit"]
    assert meter == {}
    assert source.nameplate["WRtg"] == 3680.0  # model 120 read once, at discovery


async def test_a_sunspec_device_without_an_inverter_model_is_refused_clearly():
    device = json.loads((FIXTURES / "pysunspec2_test_device" / "device.json").read_text())
    image = sunspec_image(device["models"])
    with pytest.raises(SunSpecError, match=r"lists models \[1, 129\]: no inverter model"):
        await _read(image)


def _solar(name: str):
    return parse_response((GEN24 / name).read_bytes())


def _gen24_image_from_the_recording() -> tuple[dict[int, int], dict[int, int]]:
    """A GEN24 register image (pysunspec2's encoder) holding the values of the Solar API
    recording, in SunSpec's own conventions: W delivered > 0, meter W import > 0, the battery
    as MPPT modules StCha/StDisCha (as Fronius lists it)."""
    common = _solar("GetInverterRealtimeData_Device_1.json")
    flow = _solar("GetPowerFlowRealtimeData.json")["Site"]
    soc = _solar("GetPowerFlowRealtimeData.json")["Inverters"]["1"]["SOC"]
    m = _solar("GetMeterRealtimeData.json")["0"]

    def r(x, sf):
        return round(x / 10**sf)

    inverter = [
        {"ID": 1, "L": 66, "Mn": "Fronius", "Md": "Primo GEN24 Plus"},
        {
            "ID": 103,
            "L": 50,
            "W": r(common["PAC"]["Value"], -1),
            "W_SF": -1,
            "VA": r(common["SAC"]["Value"], -1),
            "VA_SF": -1,
            "Hz": r(common["FAC"]["Value"], -2),
            "Hz_SF": -2,
            "WH": r(common["TOTAL_ENERGY"]["Value"], 0),
            "WH_SF": 0,
        },
        {
            "ID": 124,
            "L": 24,
            "WChaMax": 10000,
            "WChaMax_SF": 0,
            "ChaState": r(soc, -1),
            "ChaState_SF": -1,
            "ChaSt": 6,
        },
        {
            "ID": 160,
            "L": 88,
            "DCW_SF": -2,
            "N": 4,
            "module": [
                {"ID": 1, "IDStr": "String 1", "DCW": r(flow["P_PV"] * 0.6, -2)},
                {"ID": 2, "IDStr": "String 2", "DCW": r(flow["P_PV"] * 0.4, -2)},
                {"ID": 3, "IDStr": "StCha 3", "DCW": 0},
                {"ID": 4, "IDStr": "StDisCha 4", "DCW": r(flow["P_Akku"], -2)},
            ],
        },
    ]
    meter = [
        {"ID": 1, "L": 65, "Mn": "Fronius", "Md": "Smart Meter TS 65A-3"},
        {
            "ID": 203,
            "L": 105,
            "W": r(m["PowerReal_P_Sum"], -1),
            **{
                f"Wph{p}": r(m[f"PowerReal_P_Phase_{k}"], -1)
                for k, p in ((1, "A"), (2, "B"), (3, "C"))
            },
            "W_SF": -1,
            **{
                f"PhVph{p}": r(m[f"Voltage_AC_Phase_{k}"], -1)
                for k, p in ((1, "A"), (2, "B"), (3, "C"))
            },
            "V_SF": -1,
            "Hz": r(m["Frequency_Phase_Average"], -2),
            "Hz_SF": -2,
            "VAR": r(m["PowerReactive_Q_Sum"], -1),
            "VAR_SF": -1,
            "PF": r(m["PowerFactor_Sum"] * 100, -1),
            "PF_SF": -1,
            "TotWhImp": r(m["EnergyReal_WAC_Plus_Absolute"], 0),
            "TotWhExp": r(m["EnergyReal_WAC_Minus_Absolute"], 0),
            "TotWh_SF": 0,
        },
    ]
    return sunspec_image(inverter), sunspec_image(meter)


async def test_solar_api_and_sunspec_of_one_gen24_agree_on_sign_and_unit():
    inverter_image, meter_image = _gen24_image_from_the_recording()
    _, by_modbus, _ = await _read(inverter_image)
    # Model 203 after 'SunS' and a common model of L = 65, as on Fronius' unit 200.
    meter_by_modbus = sunspec_points.meter(
        decode_model([meter_image[a] for a in range(40069, 40069 + 2 + 105)])
    )
    by_api = solar_points.inverter_common(_solar("GetInverterRealtimeData_Device_1.json"))
    flow = solar_points.power_flow(_solar("GetPowerFlowRealtimeData.json"))
    by_api |= {k: flow[k] for k in ("P_PV", "P_ESS", "SoC")}
    meter_by_api = solar_points.meter(_solar("GetMeterRealtimeData.json"))
    pairs = [(by_modbus, by_api, ("P", "S", "f", "Am", "P_PV", "P_ESS", "SoC"))]
    pairs.append(
        (meter_by_modbus, meter_by_api, ("P", "P1", "P2", "P3", "U1", "f", "Q", "PF", "Ap", "Am"))
    )
    for modbus, api, names in pairs:
        for name in names:
            a, b = modbus[name], api[name]
            assert isinstance(a, float) and isinstance(b, float), name
            # Same sign, same unit (the same point), and the same value to the register's step.
            assert (a > 0) == (b > 0) and (a < 0) == (b < 0), (name, a, b)
            assert a == pytest.approx(b, rel=1e-3, abs=0.06), (name, a, b)
    assert by_modbus["P"] < 0 and by_modbus["P_PV"] < 0 and by_modbus["P_ESS"] < 0
    assert meter_by_modbus["P"] > 0 and meter_by_modbus["Ap"] == 1247.204
