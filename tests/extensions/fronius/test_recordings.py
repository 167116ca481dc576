"""Every recorded Solar API response in fixtures/<model>/ maps to its snapshot
(`expected.toml`: values, units, signs, qualities), and the real extension device, reading the
recordings over real HTTP, publishes their merge: day, then night. Also what goes on the wire."""

from __future__ import annotations

import pytest

from extensions.fronius.device import FroniusDevice
from extensions.fronius.energy import EnergyIntegrator
from extensions.fronius.http_get import request_bytes
from extensions.fronius.solar_api import SolarApi
from extensions.fronius.solar_source import SolarSource

from .recordings import SOLAR_API, expected, mapped
from .support import fixture_server, plain

pytestmark = pytest.mark.timeout(60)


def test_every_folder_has_provenance_and_a_snapshot_of_every_response():
    assert {d.name for d in SOLAR_API} == {"gen24_plus_byd", "symo_20"}
    for folder in SOLAR_API:
        assert (folder / "README.md").is_file()
        assert "licence: Apache-2.0" in (folder / "README.md").read_text()
        snapshot = expected(folder)
        assert set(snapshot) == {p.name for p in folder.glob("Get*.json")}


@pytest.mark.parametrize(
    "path", [p for d in SOLAR_API for p in sorted(d.glob("Get*.json"))], ids=lambda p: p.name
)
def test_recorded_response_maps_to_its_snapshot(path):
    want = expected(path.parent)[path.name]
    got = mapped(path)
    for key in ("device", "error", "base_url", "read"):
        assert got.get(key) == want.get(key)
    points = {k: v for k, v in want.items() if isinstance(v, dict)}
    assert got.get("points", {}).keys() == points.keys()
    for name, fields in points.items():
        mine = got["points"][name]
        assert (mine["unit"], mine["quality"]) == (fields["unit"], fields["quality"]), name
        if "value" in fields:
            value = fields["value"]
            assert mine["value"] == (
                value if isinstance(value, str) else pytest.approx(value, rel=1e-12)
            ), name
        else:
            assert "value" not in mine, name


def test_the_solar_api_signs_are_converted_to_the_load_reference():
    gen24 = expected(SOLAR_API[0])
    flow = gen24["GetPowerFlowRealtimeData.json"]
    # Recorded: P_PV = +216 W (producing), P_Akku = +0.16 W (discharging).
    assert flow["P_PV"]["value"] < 0 and flow["P_ESS"]["value"] < 0
    assert gen24["GetInverterRealtimeData_Device_1.json"]["P"]["value"] < 0  # feeding
    meter = gen24["GetMeterRealtimeData.json"]
    assert meter["P"]["value"] > 0  # importing 488 W at the grid: P_Grid > 0 in the flow


def _device(folder_port: int, tmp_path, meter: str | None = "fronius_meter") -> FroniusDevice:
    api = SolarApi("127.0.0.1", folder_port, timeout=2.0, min_gap=0.0)
    return FroniusDevice(
        "fronius",
        sunspec=None,
        solar=SolarSource(api),
        energy=EnergyIntegrator(tmp_path / "energy.json"),
        meter_name=meter,
    )


def _merged(folder, files, device):
    """What the device must publish: the snapshots of `files`, the first value winning."""
    snapshot = expected(folder)
    out: dict[str, tuple] = {}
    for name in files:
        table = snapshot[name]
        prefix = table.get("device", "fronius")
        if table.get("device") != device:
            continue
        for point, fields in table.items():
            if isinstance(fields, dict) and "value" in fields:
                out.setdefault(f"{prefix}/{point}", (fields["value"], "GOOD"))
    return out


async def test_gen24_recordings_through_the_device_over_http(tmp_path):
    folder = SOLAR_API[0]
    server = await fixture_server(folder).start()
    try:
        device = _device(server.port, tmp_path)
        got = plain(await device.poll())
    finally:
        await server.stop()
    order = [
        "GetInverterRealtimeData_Device_1.json",
        "GetPowerFlowRealtimeData.json",
        "GetStorageRealtimeData.json",
    ]
    want = _merged(folder, order, "fronius") | _merged(
        folder, ["GetMeterRealtimeData.json"], "fronius_meter"
    )
    want["fronius/Ap"] = (0.0, "DERIVED")  # no import counter: integrated, from 0
    assert got.keys() == want.keys()
    for name, (value, quality) in want.items():
        assert got[name][1] == quality, name
        assert got[name][0] == (pytest.approx(value) if isinstance(value, float) else value)
    # The requests, byte for byte: discovery, then the realtime requests.
    heads = server.requests
    assert heads[:3] == [
        request_bytes("127.0.0.1", "/solar_api/GetAPIVersion.cgi"),
        request_bytes("127.0.0.1", "/solar_api/v1/GetActiveDeviceInfo.cgi?DeviceClass=System"),
        request_bytes("127.0.0.1", "/solar_api/v1/GetInverterInfo.cgi"),
    ]
    assert heads[0] == (
        b"GET /solar_api/GetAPIVersion.cgi HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        b"Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    v1 = "/solar_api/v1/"
    assert sorted(heads[3:]) == sorted(
        request_bytes("127.0.0.1", v1 + t)
        for t in (
            "GetPowerFlowRealtimeData.fcgi",
            "GetInverterRealtimeData.cgi?Scope=Device&DeviceId=1&DataCollection=CommonInverterData",
            "GetInverterRealtimeData.cgi?Scope=Device&DeviceId=1&DataCollection=3PInverterData",
            "GetMeterRealtimeData.cgi?Scope=System",
            "GetStorageRealtimeData.cgi?Scope=System",
        )
    )


async def test_symo_day_then_night_nulls_turn_bad_never_zero(tmp_path):
    folder = SOLAR_API[1]
    day = await fixture_server(folder).start()
    device = _device(day.port, tmp_path)
    try:
        first = plain(await device.poll())
        second_requests = len(day.requests)
        await device.poll()  # storage answered 255: not asked again
        asked = [h.split(b" ")[1] for h in day.requests[second_requests:]]
        assert not any(b"GetStorageRealtimeData" in a for a in asked)
    finally:
        await day.stop()
    assert first["fronius/P"] == (-1190.0, "GOOD")
    assert first["fronius/P_PV"] == (-1111.0, "GOOD")
    assert first["fronius/f"] == (49.94, "GOOD")
    assert "fronius/P_ESS" not in first and "fronius/SoC" not in first  # no battery
    assert first["fronius_meter/P"] == (5592.57, "GOOD")

    night = fixture_server(folder, night=True)
    night.port = day.port
    await night.start()
    try:
        dark = plain(await device.poll())
    finally:
        await night.stop()
    # P_PV and f reported null/absent: BAD with their last value, never 0 GOOD.
    assert dark["fronius/P_PV"] == (-1111.0, "BAD")
    assert dark["fronius/f"] == (49.94, "BAD")
    # The inverter's own power flow says 0 W: a reading, GOOD.
    assert dark["fronius/P"] == (0.0, "GOOD")
    assert dark["fronius/Am"] == (44186.9, "GOOD")
