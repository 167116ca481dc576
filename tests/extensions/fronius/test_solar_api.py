"""The Solar API client on the wire (real HTTP over loopback): the exact request bytes, at
most two requests in flight, the pacing of realtime requests, v0 refused in one line, the
response envelope; and the extension's config checks."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from extensions.fronius.config import FroniusConfig
from extensions.fronius.http_get import HttpError, http_get
from extensions.fronius.sim_http import HttpServer
from extensions.fronius.solar_api import (
    V0_MESSAGE,
    NotSupported,
    SolarApi,
    SolarApiError,
    parse_response,
)
from extensions.sdk import SetupError, parse_settings

pytestmark = pytest.mark.timeout(30)

OK = json.dumps({"Head": {"Status": {"Code": 0}}, "Body": {"Data": {"x": 1}}}).encode()


def _ok(path: str, query: dict[str, str]) -> tuple[int, bytes]:
    if path.endswith("GetAPIVersion.cgi"):
        return 200, b'{"APIVersion": 1, "BaseURL": "/solar_api/v1/"}'
    return 200, OK


async def test_the_request_on_the_wire_is_a_plain_http_1_0_get():
    server = await HttpServer(_ok).start()
    try:
        api = SolarApi("127.0.0.1", server.port, min_gap=0)
        data = await api.request(
            "GetInverterRealtimeData.cgi",
            Scope="Device",
            DeviceId="1",
            DataCollection="CommonInverterData",
        )
    finally:
        await server.stop()
    assert data == {"x": 1}
    assert server.requests == [
        b"GET /solar_api/v1/GetInverterRealtimeData.cgi?Scope=Device&DeviceId=1"
        b"&DataCollection=CommonInverterData HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        b"Accept: application/json\r\nConnection: close\r\n\r\n"
    ]


async def test_at_most_two_requests_in_flight():
    server = await HttpServer(_ok).start()
    server.delay = 0.15
    try:
        api = SolarApi("127.0.0.1", server.port, min_gap=0)
        await asyncio.gather(*(api.request(f"Get{i}.cgi") for i in range(6)))
    finally:
        await server.stop()
    assert len(server.requests) == 6
    assert server.max_in_flight == 2


async def test_a_realtime_request_of_one_device_waits_min_gap_after_the_last():
    times: dict[str, list[float]] = {}

    def respond(path: str, query: dict[str, str]) -> tuple[int, bytes]:
        times.setdefault(path + str(sorted(query.items())), []).append(time.monotonic())
        return 200, OK

    server = await HttpServer(respond).start()
    try:
        api = SolarApi("127.0.0.1", server.port, min_gap=0.4)
        for _ in range(2):
            await api.request("GetPowerFlowRealtimeData.fcgi")
            await api.request("GetMeterRealtimeData.cgi", Scope="System")
    finally:
        await server.stop()
    for starts in times.values():
        assert len(starts) == 2 and starts[1] - starts[0] >= 0.38
    # Two different requests are not held back by each other.
    first = sorted(s[0] for s in times.values())
    assert first[1] - first[0] < 0.2


@pytest.mark.parametrize(
    "answer",
    [(404, b"Not Found"), (200, b'{"APIVersion": 0}'), (200, b"{}")],
    ids=["no GetAPIVersion", "APIVersion 0", "no APIVersion"],
)
async def test_an_api_v0_datamanager_is_refused_with_a_clear_message(answer):
    server = await HttpServer(lambda path, query: answer).start()
    try:
        with pytest.raises(SolarApiError) as err:
            await SolarApi("127.0.0.1", server.port).discover()
    finally:
        await server.stop()
    assert str(err.value) == V0_MESSAGE
    assert "v0" in V0_MESSAGE and "solar_api = false" in V0_MESSAGE


def test_the_envelope_status_codes():
    def doc(code: int, data: object = None) -> bytes:
        return json.dumps(
            {"Head": {"Status": {"Code": code, "Reason": "why"}}, "Body": {"Data": data or {}}}
        ).encode()

    assert parse_response(doc(0, {"a": 1})) == {"a": 1}
    for code in (255, 11):
        with pytest.raises(NotSupported, match=f"Status.Code {code} \\(why\\)"):
            parse_response(doc(code))
    with pytest.raises(SolarApiError, match="Status.Code 8") as err:
        parse_response(doc(8))
    assert not isinstance(err.value, NotSupported) and err.value.code == 8
    with pytest.raises(SolarApiError, match="not JSON, or cut short"):
        parse_response(b'{"Head": {"Sta')
    with pytest.raises(SolarApiError, match="no Head.Status.Code"):
        parse_response(b"[1, 2]")


async def test_http_errors_say_what_and_where():
    server = await HttpServer(lambda p, q: (500, b"boom")).start()
    try:
        with pytest.raises(HttpError, match=r"/x: HTTP 500 Internal Server Error") as err:
            await http_get("127.0.0.1", server.port, "/x", 1.0)
        assert err.value.status == 500
    finally:
        await server.stop()
    with pytest.raises(HttpError, match="127.0.0.1"):
        await http_get("127.0.0.1", server.port, "/x", 1.0)  # nobody listens any more


def test_unknown_and_wrong_config_keys_are_one_line():
    cfg = parse_settings(FroniusConfig, {"host": "192.0.2.20"}, where="extensions.fronius.config")
    assert (cfg.interval, cfg.min_request_gap, cfg.unit, cfg.meter_unit) == (5.0, 4.0, 1, 200)
    with pytest.raises(SetupError) as err:
        parse_settings(FroniusConfig, {"host": "h", "hots": "x"}, where="extensions.fronius.config")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("extensions.fronius.config.hots: unknown key")
    assert "did you mean 'host'" in str(err.value)
    with pytest.raises(SetupError, match=r"config.host"):
        parse_settings(FroniusConfig, {}, where="extensions.fronius.config")
    with pytest.raises(SetupError, match=r"config.revert_after"):
        parse_settings(
            FroniusConfig, {"host": "h", "revert_after": 1}, where="extensions.fronius.config"
        )
