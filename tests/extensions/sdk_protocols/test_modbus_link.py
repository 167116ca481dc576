"""The shared Modbus line: the bytes an RTU read puts on the wire and how the answer is taken
(the Modbus over serial line specification's own example, a hand-made device on a pty), Modbus
exceptions and silence as errors, one client per line, the RTU timing, line config checks."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from dataclasses import dataclass

import pytest

from extensions.sdk import SetupError, parse_settings, setting
from extensions.sdk.protocols.modbus_link import (
    LinkConfig,
    LinkConfigError,
    LinkPool,
    ModbusLinkError,
)

from .images import ImageServer
from .ptys import socat_pair

pytestmark = pytest.mark.timeout(30)


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC (polynomial 0xA001, initial 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class Device(threading.Thread):
    """A device on the other end of the pty: records each request, sends the scripted answer."""

    def __init__(self, path: str, answers: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.answers = answers
        self.requests: list[bytes] = []

    def run(self) -> None:
        for answer in self.answers:
            request = b""
            while len(request) < 8:  # every read request is 8 bytes
                if not select.select([self.fd], [], [], 5)[0]:
                    return
                request += os.read(self.fd, 64)
            self.requests.append(request)
            os.write(self.fd, answer)

    def close(self) -> None:
        self.join(5)
        os.close(self.fd)


@pytest.fixture
def pty_pair(tmp_path):
    with socat_pair(tmp_path) as pair:
        yield pair


def test_the_crc_helper_matches_the_specifications_example():
    assert crc16(bytes.fromhex("11 03 00 6B 00 03")) == bytes.fromhex("76 87")


async def test_an_rtu_read_is_the_specifications_frame_and_its_answer_decodes(pty_pair):
    # Modbus over serial line spec: read holding registers 108-110 (address 0x6B) of unit 17.
    device_end, reader_end = pty_pair
    device = Device(device_end, [bytes.fromhex("11 03 06 AE41 5652 4340 49AD")])
    device.start()
    pool = LinkPool()
    link = pool.get(LinkConfig(serial=reader_end, baudrate=19200, response_timeout=1.0))
    try:
        assert await link.read(0x11, 3, 0x6B, 3) == [0xAE41, 0x5652, 0x4340]
    finally:
        pool.release(link)
        device.close()
    assert device.requests == [bytes.fromhex("11 03 00 6B 00 03 76 87")]


async def test_an_exception_answer_and_a_corrupt_answer_are_named(pty_pair):
    device_end, reader_end = pty_pair
    exception = bytes.fromhex("11 84 02")
    corrupt = bytes.fromhex("11 04 02 00 2A 00 00")  # wrong CRC: dropped, as if silent
    device = Device(device_end, [exception + crc16(exception), corrupt])
    device.start()
    pool = LinkPool()
    link = pool.get(LinkConfig(serial=reader_end, baudrate=19200, response_timeout=0.3))
    try:
        with pytest.raises(ModbusLinkError, match=r"exception 2 \(illegal data address\)") as err:
            await link.read(0x11, 4, 0x0100, 1)
        assert err.value.code == 2
        t0 = time.monotonic()
        with pytest.raises(ModbusLinkError, match="no answer from unit 17 .* within 0.3 s") as err:
            await link.read(0x11, 4, 0x0100, 1)
        assert err.value.code is None
        assert time.monotonic() - t0 < 0.3 + 0.4  # one timeout, no retries
    finally:
        pool.release(link)
        device.close()
    request = bytes.fromhex("11 04 01 00 00 01")
    assert device.requests == [request + crc16(request)] * 2


async def test_devices_on_one_endpoint_share_one_client_until_the_last_leaves():
    async with ImageServer({a: a for a in range(100)}, unit=1) as server:
        pool = LinkPool()
        config = LinkConfig(host="127.0.0.1", port=server.port)
        first, second = pool.get(config), pool.get(config)
        assert first is second and list(pool.links) == [f"tcp:127.0.0.1:{server.port}"]
        got = await asyncio.gather(first.read(1, 3, 10, 3), second.read(1, 4, 50, 2))
        assert got == [[10, 11, 12], [50, 51]]
        pool.release(first)
        assert pool.links and first.client.connected
        pool.release(second)
        assert not pool.links


def test_a_second_device_with_other_line_settings_is_refused():
    pool = LinkPool()
    pool.get(LinkConfig(serial="/dev/ttyUSB7", baudrate=9600))
    with pytest.raises(LinkConfigError, match="must share baudrate"):
        pool.get(LinkConfig(serial="/dev/ttyUSB7", baudrate=19200))


def test_rtu_timing_follows_the_character_frame():
    # 8N1 at 9600: 10 bits a character; the silence between frames is 3.5 characters.
    assert LinkConfig(serial="x", baudrate=9600).frame_gap == pytest.approx(3.5 * 10 / 9600)
    # 8E1: 11 bits; above 19200 baud the gap is fixed at 1.75 ms.
    assert LinkConfig(serial="x", parity="E").char_time == pytest.approx(11 / 9600)
    assert LinkConfig(serial="x", baudrate=38400).frame_gap == 0.00175
    # Reading 10 registers: 8 request + 25 answer bytes on the wire, plus two gaps.
    rtu = LinkConfig(serial="x", baudrate=9600)
    assert rtu.line_time(10) == pytest.approx(33 * 10 / 9600 + 2 * rtu.frame_gap)
    assert LinkConfig(host="h").frame_gap == 0.0 and LinkConfig(host="h").line_time(10) == 0.0


@dataclass(frozen=True, kw_only=True)
class InverterEntry(LinkConfig):
    """A device entry's schema: the line keys and its own."""

    unit: int = setting(1, min=1, max=247)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, "inverter[0]: give either serial (RTU) or host (TCP)"),
        ({"serial": "/dev/x", "host": "h"}, "inverter[0]: give either serial (RTU) or host (TCP)"),
        ({"serial": "/dev/x", "parity": "X"}, 'inverter[0].parity: "X" is not a choice'),
        ({"host": "h", "port": "five"}, 'inverter[0].port: expected an integer, got "five"'),
        ({"serial": "/dev/x", "baudrate": 0}, "inverter[0].baudrate: must be between"),
        ({"host": "h", "response_timeout": "soon"}, "inverter[0].response_timeout: expected a"),
        ({"host": "h", "prot": 502}, "inverter[0].prot: unknown key (did you mean 'port'?"),
    ],
)
def test_line_config_mistakes_name_the_key(entry, message):
    with pytest.raises(SetupError) as err:
        checked = parse_settings(InverterEntry, entry, where="inverter[0]")
        LinkConfig.from_config(checked, "inverter[0]")
    assert str(err.value).startswith(message), str(err.value)


def test_line_config_from_an_entry():
    entry = parse_settings(InverterEntry, {"host": "192.0.2.7", "port": 1502, "unit": 2})
    config = LinkConfig.from_config(entry, "inverter[0]")
    assert type(config) is LinkConfig and config.key == "tcp:192.0.2.7:1502" and not config.is_rtu
    entry = parse_settings(
        InverterEntry, {"serial": "/dev/ttyUSB0", "baudrate": 19200, "parity": "E"}
    )
    config = LinkConfig.from_config(entry, "inverter[0]")
    assert config.key == "rtu:/dev/ttyUSB0" and config.char_time == pytest.approx(11 / 19200)
