"""The shared serial line on a real pty pair: the character frame on the port, exact bytes out,
reads up to a terminator (what follows stays buffered), silence, input that stops halfway,
garbage past the size limit, a baud switch that keeps what already came, and aborting a read
blocked in another thread."""

from __future__ import annotations

import os
import termios
import threading
import time

import pytest
import serial

from extensions.sdk.protocols.serial_line import (
    Aborted,
    IncompleteInput,
    LinePortError,
    SerialLine,
)

from .ptys import socat_pair

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair(tmp_path):
    """(device fd, line): the device end opened raw, the line on the other end (8N1)."""
    with socat_pair(tmp_path) as (device_end, line_end):
        fd = os.open(device_end, os.O_RDWR | os.O_NOCTTY)
        line = SerialLine(line_end, char_timeout=0.2)
        try:
            yield fd, line
        finally:
            line.close()
            os.close(fd)


def _read(fd: int, n: int, timeout: float = 2.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            got += os.read(fd, n - len(got))
        except BlockingIOError:
            time.sleep(0.01)
    return got


def _later(delay: float, fn) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


def test_the_frame_is_asked_of_the_port_and_writes_arrive_exactly(tmp_path):
    opened: list[dict] = []

    def recording(port, **settings):
        opened.append(settings)
        return serial.Serial(port, **settings)

    with socat_pair(tmp_path) as (device_end, line_end):
        fd = os.open(device_end, os.O_RDWR | os.O_NOCTTY)
        line = SerialLine(line_end, frame="7E1", serial_factory=recording)
        try:
            line.start(300)
            line.start(300)  # a second conversation: the port stays open
            # (A Linux pty forces 8N1 in its termios, so the frame is checked where it is
            # asked for.)
            assert len(opened) == 1
            assert {k: opened[0][k] for k in ("baudrate", "bytesize", "parity", "stopbits")} == {
                "baudrate": 300,
                "bytesize": serial.SEVENBITS,
                "parity": serial.PARITY_EVEN,
                "stopbits": serial.STOPBITS_ONE,
            }
            line.write(b"/?!\r\n")
            assert _read(fd, 5) == b"/?!\r\n"
        finally:
            line.close()
            os.close(fd)


def test_read_until_takes_the_terminator_and_keeps_what_follows(pair):
    fd, line = pair
    line.start(9600)
    os.write(fd, b"\x02DATA\x03\x17NEXT\r\n")
    deadline = time.monotonic() + 2
    frame = line.read_until(b"\x03", first_timeout=1, deadline=deadline, limit=64, extra=1)
    assert frame == b"\x02DATA\x03\x17"  # the checksum byte after the terminator came along
    # The rest was already read from the port: it is served from the buffer, not lost.
    assert line.read_until(b"\r\n", first_timeout=0, deadline=deadline, limit=64) == b"NEXT\r\n"


def test_silence_is_none_after_the_first_timeout(pair):
    fd, line = pair
    line.start(9600)
    t0 = time.monotonic()
    assert line.read_until(b"\n", first_timeout=0.3, deadline=t0 + 5, limit=64) is None
    assert 0.25 < time.monotonic() - t0 < 0.6


def test_input_that_stops_halfway_names_what_came(pair):
    fd, line = pair
    line.start(9600)
    os.write(fd, b"\x02HALF A MESS")
    with pytest.raises(IncompleteInput, match="input stopped after 12 bytes") as err:
        line.read_until(b"\x03", first_timeout=1, deadline=time.monotonic() + 5, limit=64)
    assert err.value.received == b"\x02HALF A MESS"
    assert not line.buffer  # the next conversation starts clean


def test_garbage_past_the_limit_is_refused(pair):
    fd, line = pair
    line.start(9600)
    os.write(fd, bytes(range(32, 127)) * 2)
    with pytest.raises(IncompleteInput, match=r"no b'\\x03' within 100 bytes"):
        line.read_until(b"\x03", first_timeout=1, deadline=time.monotonic() + 5, limit=100)


def test_a_baud_switch_keeps_the_port_open_and_what_already_came(pair):
    fd, line = pair
    line.start(300)
    port = line._serial
    os.write(fd, b"ACK\r\nfirst bytes at the new rate\r\n")
    time.sleep(0.2)  # the bytes are in the port's input queue before the switch
    line.set_baud(9600)
    assert line._serial is port and line.baudrate == 9600
    assert termios.tcgetattr(port.fileno())[5] == termios.B9600  # on the open fd
    deadline = time.monotonic() + 2
    assert line.read_until(b"\r\n", first_timeout=1, deadline=deadline, limit=64) == b"ACK\r\n"
    got = line.read_until(b"\r\n", first_timeout=1, deadline=deadline, limit=64)
    assert got == b"first bytes at the new rate\r\n"


def test_abort_from_another_thread_ends_a_blocked_read_at_once(pair):
    fd, line = pair
    token = threading.Event()
    line.start(9600, token)
    timer = _later(0.2, lambda: line.abort(token))
    t0 = time.monotonic()
    with pytest.raises(Aborted):
        line.read_until(b"\n", first_timeout=10, deadline=t0 + 10, limit=64)
    assert time.monotonic() - t0 < 0.5
    timer.join()


def test_a_conversation_aborted_before_it_got_the_line_never_reads(pair):
    fd, line = pair
    token = threading.Event()
    line.abort(token)  # cancelled while another conversation held the line
    line.start(9600, token)
    assert line.aborted
    os.write(fd, b"late answer\n")
    with pytest.raises(Aborted):
        line.read_until(b"\n", first_timeout=1, deadline=time.monotonic() + 1, limit=64)


def test_a_missing_port_is_a_port_error(tmp_path):
    line = SerialLine(str(tmp_path / "ttyUSB9"))
    with pytest.raises(LinePortError, match="cannot open serial port .*ttyUSB9"):
        line.start(9600)


def test_devices_on_one_port_share_the_line_and_its_frame(tmp_path):
    port = str(tmp_path / "rs485")
    line = SerialLine.shared(port, frame="7E1")
    assert SerialLine.shared(port, frame="7E1") is line
    with pytest.raises(ValueError, match="must share its frame"):
        SerialLine.shared(port, frame="8N1")
    with pytest.raises(ValueError, match="not a serial frame"):
        SerialLine(port, frame="9X3")
