"""The frame codec: the exact bytes of every frame kind on the wire, and a decoder that finds
the frames in any byte stream without ever raising."""

from __future__ import annotations

import math
import struct
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.energy_router import messages as m
from extensions.energy_router.control import PowerSetpoint
from extensions.energy_router.frames import (
    MAX_FRAME,
    Frame,
    FrameDecoder,
    encode,
    float_frame,
    floats_of,
    pack_floats,
    shortest,
)
from extensions.energy_router.messages import BATTERY, INVERTER

ONE = bytes.fromhex("0000803f")  # 1.0f little-endian
F1500 = bytes.fromhex("00 80 bb 44")  # 1500.0f


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        # computer -> controller
        (m.id_request(INVERTER), "fe 06 0a 01 00000000"),
        (m.id_request(BATTERY, 1.0), "fe 06 0b 01 0000803f"),
        (m.keep_alive(INVERTER.command), "fe 02 0a 02"),
        (m.keep_alive(BATTERY.command), "fe 02 0b 02"),
        (Frame(INVERTER.command, m.INV_MODE, b"\x02"), "fe 03 0a 0a 02"),
        (float_frame(INVERTER.command, m.INV_P, 1500.0), "fe 06 0a 1e 0080bb44"),
        (float_frame(INVERTER.command, m.INV_Q, -1.0), "fe 06 0a 28 000080bf"),
        (Frame(INVERTER.command, m.INV_GRID_STATE), "fe 02 0a 15"),
        (Frame(INVERTER.command, m.BLACK_START), "fe 02 0a 6e"),
        (Frame(BATTERY.command, m.BAT_MODE, b"\x01"), "fe 03 0b 32 01"),
        (float_frame(BATTERY.command, m.BAT_P, 1500.0), "fe 06 0b 3c 0080bb44"),
        (Frame(BATTERY.command, m.PV_MODE, b"\x01"), "fe 03 0b 46 01"),
        (float_frame(BATTERY.command, m.PV_P, 1.0), "fe 06 0b 50 0000803f"),
        (Frame(BATTERY.command, m.LOADS, b"\x00"), "fe 03 0b 5a 00"),
        # controller -> computer
        (m.id_answer(INVERTER), "fe 03 14 01 01"),
        (m.id_answer(BATTERY), "fe 03 15 01 02"),
        (m.keep_alive(BATTERY.data), "fe 02 15 02"),
        (m.confirmation(INVERTER, m.INV_P, True), "fe 03 14 1f 01"),
        (m.confirmation(BATTERY, m.BAT_P, False), "fe 03 15 3d 00"),
        (
            Frame(INVERTER.data, m.INV_MEASUREMENTS, pack_floats(1500.0, 1.0, 1.0) + b"\x01"),
            "fe 0f 14 14 0080bb44 0000803f 0000803f 01",
        ),
        (Frame(INVERTER.data, m.INV_VDC, ONE), "fe 06 14 78 0000803f"),
        (
            Frame(BATTERY.data, m.BAT_P, pack_floats(1.0, 1500.0, 1.0)),
            "fe 0e 15 3c 0000803f 0080bb44 0000803f",
        ),
        (Frame(BATTERY.data, m.PV_P, F1500 + ONE), "fe 0a 15 50 0080bb44 0000803f"),
        (Frame(INVERTER.error, m.INV_ERROR, b"\x07"), "fe 03 28 0a 07"),
        (Frame(BATTERY.error, m.BAT_ERROR, b"\x02"), "fe 03 29 14 02"),
        (Frame(BATTERY.error, m.PV_ERROR, b"\x03"), "fe 03 29 1e 03"),
    ],
)
def test_exact_bytes_on_the_wire(frame: Frame, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert encode(frame) == raw
    assert FrameDecoder().feed(raw) == [frame]


def test_floats_are_little_endian_single() -> None:
    assert pack_floats(-2.5) == struct.pack("<f", -2.5) == bytes.fromhex("000020c0")
    assert floats_of(bytes.fromhex("000020c0 0000803f"), 2) == (-2.5, 1.0)
    assert floats_of(b"\x00\x00", 1) is None


@given(st.floats(width=32))
def test_shortest_is_the_same_float32_in_at_most_nine_digits(value: float) -> None:
    short = shortest(value)
    if math.isnan(value):
        assert math.isnan(short)
        return
    assert struct.pack("<f", short) == struct.pack("<f", value)  # the same bits on the wire
    assert float(f"{short:.9g}") == short  # a decimal of at most 9 significant digits


def test_shortest_drops_the_widening_noise() -> None:
    widened = struct.unpack("<f", struct.pack("<f", 3000.1))[0]
    assert widened == 3000.10009765625
    assert shortest(widened) == 3000.1
    assert shortest(struct.unpack("<f", struct.pack("<f", 16777217.0))[0]) == 16777216.0
    assert shortest(struct.unpack("<f", struct.pack("<f", 1e-45))[0]) == 1e-45  # subnormal
    assert shortest(1e300) == 1e300  # no float32: left as it is
    near_max = 3.4025001647762064e38  # a float32: at 4 digits, 3.403e38, past the largest one
    assert shortest(near_max) == 3.4025002e38


def test_a_frame_over_64_bytes_cannot_be_made() -> None:
    with pytest.raises(ValueError):
        Frame(1, 2, bytes(MAX_FRAME - 3))
    with pytest.raises(ValueError):
        float_frame(10, 30, float("nan"))


def test_resynchronises_after_garbage_and_split_input() -> None:
    good = encode(m.confirmation(INVERTER, m.INV_P, True))
    decoder = FrameDecoder()
    stream = b"\x00\x13garbage" + good + b"\xff" + good
    got = [f for byte in stream for f in decoder.feed(bytes((byte,)))]
    assert got == [m.confirmation(INVERTER, m.INV_P, True)] * 2
    assert decoder.skipped == len(b"\x00\x13garbage\xff")


def test_an_oversize_frame_is_dropped_and_the_next_one_found() -> None:
    oversize = bytes((0xFE, 63, 20, 20)) + bytes(61)
    good = encode(m.id_answer(BATTERY))
    assert FrameDecoder().feed(oversize + good) == [m.id_answer(BATTERY)]


def test_a_stray_begin_byte_does_not_swallow_the_next_frame() -> None:
    # Noise "FE 0C" announces 12 bytes: a frame the controller would never send.
    decoder = FrameDecoder(accept=lambda f: m.accepts(BATTERY, f))
    good = Frame(BATTERY.data, m.PV_P, F1500 + ONE)
    assert decoder.feed(b"\xfe\x0c" + encode(good) + encode(good)) == [good, good]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 50), max_size=20))
def test_any_input_in_any_slices_never_raises(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder()
    at = 0
    for cut in cuts + [len(data)]:
        for frame in decoder.feed(data[at : at + cut]):
            assert len(encode(frame)) <= MAX_FRAME
        at += cut
    assert decoder.pending <= MAX_FRAME


_sent_frames = st.sampled_from(
    [
        m.id_answer(BATTERY),
        m.keep_alive(BATTERY.data),
        m.confirmation(BATTERY, m.BAT_P, True),
        Frame(BATTERY.data, m.BAT_P, pack_floats(55.0, -1200.0, 48.5)),
        Frame(BATTERY.data, m.PV_P, pack_floats(2000.0, 310.0)),
        Frame(BATTERY.error, m.PV_ERROR, b"\x03"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=40).filter(lambda b: 0xFE not in b), _sent_frames),
        max_size=12,
    ),
    st.binary(max_size=40),
)
def test_valid_frames_in_garbage_are_all_found(
    pieces: list[tuple[bytes, Frame]], tail: bytes
) -> None:
    decoder = FrameDecoder(accept=lambda f: m.accepts(BATTERY, f))
    stream = b"".join(noise + encode(frame) for noise, frame in pieces) + tail
    got = [f for i in range(0, len(stream), 7) for f in decoder.feed(stream[i : i + 7])]
    assert got[: len(pieces)] == [frame for _, frame in pieces]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), _sent_frames), max_size=10))
def test_garbage_holding_begin_bytes_loses_at_most_what_it_covers(
    pieces: list[tuple[bytes, Frame]],
) -> None:
    # A noise 0xFE may announce a plausible frame; whatever it yields is a shape the
    # controller sends, and the last frame, after a clean gap of 64 bytes, is always found.
    decoder = FrameDecoder(accept=lambda f: m.accepts(BATTERY, f))
    last = m.confirmation(BATTERY, m.PV_P, True)
    stream = b"".join(n + encode(f) for n, f in pieces) + bytes(MAX_FRAME) + encode(last)
    got = decoder.feed(stream)
    assert all(m.accepts(BATTERY, f) for f in got)
    assert got[-1] == last


def test_a_limit_holds_on_the_wire_whatever_the_float32_rounding() -> None:
    link = SimpleNamespace(controller=BATTERY)
    sp = PowerSetpoint(
        "P_ESS_set",
        link,  # type: ignore[arg-type]
        m.BAT_P,
        -2999.7,
        3000.1,
        lambda v: -v,
        lambda: Frame(BATTERY.command, m.BAT_P, bytes(4)),
    )
    # 3000.1 rounds to 3000.10009765625: one step toward zero, 3000.099853515625
    assert encode(sp.frame(3000.1)) == bytes.fromhex("fe060b3c99813bc5")
    assert struct.unpack("<f", encode(sp.frame(3000.1))[4:])[0] == -3000.099853515625
    # -2999.7 is 2999.699951171875 on the wire (the device's sign): within, as it is
    assert encode(sp.frame(-2999.7)) == bytes.fromhex("fe060b3c337b3b45")
    assert encode(float_frame(11, 60, 1500.3, within=3000.0)) == encode(float_frame(11, 60, 1500.3))
