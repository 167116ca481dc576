"""Faults: HTTP 500, timeouts, truncated JSON, a closed connection, Modbus exceptions, a device
that is not SunSpec, a model chain with a wrong length. Each gives a clear error and qualities
(BAD with the last value), the poll loop goes on, and the device comes back by itself."""

from __future__ import annotations

import asyncio
import re

import pytest

from extensions.fronius.device import FroniusDevice
from extensions.fronius.energy import EnergyIntegrator
from extensions.fronius.solar_api import SolarApi
from extensions.fronius.solar_source import SolarSource
from extensions.fronius.sunspec_source import SunSpecSource
from extensions.sdk import DeviceState
from extensions.sdk.devices import poll_forever
from extensions.sdk.protocols.modbus_link import LinkConfig, LinkPool
from extensions.sdk.protocols.sunspec import SunSpecError
from extensions.sdk.testing import until
from tests.extensions.sdk_protocols.images import ImageServer, load_dump

from .recordings import FIXTURES
from .support import fixture_server

pytestmark = pytest.mark.timeout(60)

SMA = load_dump(FIXTURES / "sma_sunny_boy_36" / "registers.regs.txt")


class Published:
    def __init__(self) -> None:
        self.points: dict[str, tuple[object, str]] = {}

    def __call__(self, name, value, quality, source_time) -> None:
        self.points[name] = (value, quality)


def _solar(port: int, timeout: float = 2.0) -> SolarSource:
    return SolarSource(SolarApi("127.0.0.1", port, timeout=timeout, min_gap=0.0))


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("500", "HTTP 500"),
        ("timeout", "no complete answer within 0.3 s"),
        ("truncate", "not JSON, or cut short"),
        ("close", "not an HTTP answer"),
    ],
)
async def test_solar_api_faults_turn_points_bad_and_the_loop_goes_on(tmp_path, fault, message):
    server = await fixture_server(FIXTURES / "gen24_plus_byd").start()
    device = FroniusDevice(
        "fronius",
        sunspec=None,
        solar=_solar(server.port, timeout=0.3),
        energy=EnergyIntegrator(None),
        meter_name="fronius_meter",
        interval=0.05,
        timeout=3.0,
        max_backoff=0.1,
    )
    state, published = DeviceState(), Published()
    loop = asyncio.create_task(poll_forever(device, state, published))
    try:
        await until(lambda: published.points.get("fronius/P") == (-250.9092559814453, "GOOD"))
        server.fault = fault
        await until(lambda: published.points["fronius/P"][1] == "BAD", timeout=5)
        assert published.points["fronius/P"][0] == -250.9092559814453  # the last value kept
        assert published.points["fronius_meter/P"][1] == "BAD"
        assert not state.ok and re.search(message, state.last_error), state.last_error
        server.fault = ""
        await until(lambda: state.ok and published.points["fronius/P"][1] == "GOOD", timeout=5)
    finally:
        loop.cancel()
        await server.stop()


async def _sunspec_device(image, unit=3, solar=None):
    server = ImageServer(image, unit=unit)
    await server.__aenter__()
    link = LinkPool().get(LinkConfig(host="127.0.0.1", port=server.port, response_timeout=0.3))
    health = {"modbus": DeviceState(), "solar_api": DeviceState()}
    device = FroniusDevice(
        "fronius",
        sunspec=SunSpecSource(link, unit, 0),
        solar=solar,
        energy=EnergyIntegrator(None),
        interval=0.05,
        timeout=3.0,
        max_backoff=0.1,
        health=health,
    )
    return server, link, device, health


async def test_a_modbus_exception_turns_the_sunspec_points_bad_the_solar_api_goes_on():
    http = await fixture_server(FIXTURES / "gen24_plus_byd").start()
    server, link, device, health = await _sunspec_device(SMA, solar=_solar(http.port))
    try:
        first = await device.poll()
        assert first["fronius/P"] == -1080.0  # SunSpec first
        assert health["modbus"].ok and health["solar_api"].ok
        # The device stops serving model 160 (exception 2, illegal data address).
        for address in range(40621, 40751):
            server.image.pop(address, None)
        await server.__aexit__()
        server.port = link.config.port
        await server.__aenter__()
        link.close()
        second = await device.poll()
        assert not health["modbus"].ok
        assert "exception 2 (illegal data address)" in health["modbus"].last_error
        assert health["solar_api"].ok
        # The Solar API still gives P and P_PV: GOOD from it; U1 came from SunSpec only: BAD.
        assert second["fronius/P"] == pytest.approx(-250.909, abs=0.001)
        assert second["fronius/U1"].quality == "BAD" and second["fronius/U1"].value == 239.2
    finally:
        link.close()
        await server.__aexit__()
        await http.stop()


async def test_a_device_that_is_not_sunspec_says_so():
    image = {40000 + i: (i * 7919) & 0xFFFF for i in range(200)}
    image |= {i: 0 for i in range(10)} | {50000 + i: 1 for i in range(10)}
    server, link, device, _ = await _sunspec_device(image)
    try:
        with pytest.raises(Exception, match=r"no 'SunS' marker at 40000, 0, 50000"):
            await device.poll()
    finally:
        link.close()
        await server.__aexit__()


async def test_a_model_chain_with_a_wrong_length_is_a_clear_error():
    image = dict(SMA)
    image[40186] = 60  # model 101 says L = 60, it has 50: the walk lands inside model 120
    server, link, device, _ = await _sunspec_device(image)
    try:
        with pytest.raises(Exception) as err:
            await device.poll()
    finally:
        link.close()
        await server.__aexit__()
    text = str(err.value)
    assert text.startswith("modbus: SunSpecError: unit 3 on 127.0.0.1:")
    assert text.endswith(
        "model 101 at 40185 has L = 60, its definition 50: the model chain is broken or not SunSpec"
    )


async def test_a_short_model_read_is_refused_not_decoded():
    image = dict(SMA)
    for address in range(40230, 40237):  # the last registers of model 101 are gone
        del image[address]
    server, link, device, _ = await _sunspec_device(image)
    try:
        with pytest.raises(Exception, match="exception 2"):
            await device.poll()
    finally:
        link.close()
        await server.__aexit__()


def test_sunspec_errors_are_sunspec_errors():
    assert issubclass(SunSpecError, Exception)
