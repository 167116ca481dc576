"""What each frame publishes: names, units and the conversion of the controllers' own signs
to the load reference, for both settings of each sign."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.energy_router import messages as m
from extensions.energy_router.frames import Frame, FrameDecoder, encode, pack_floats
from extensions.energy_router.messages import BATTERY, INVERTER
from extensions.energy_router.points import ErPoints

BATTERY_FRAME = Frame(BATTERY.data, m.BAT_P, pack_floats(61.5, 1200.0, 51.0))
INVERTER_FRAME = Frame(
    INVERTER.data, m.INV_MEASUREMENTS, pack_floats(800.0, -100.0, 231.0) + b"\x01"
)


def points(battery_positive: str = "discharge", inverter_positive: str = "export") -> ErPoints:
    return ErPoints(
        "er",
        1.0,
        battery_sign=1.0 if battery_positive == "charge" else -1.0,
        inverter_sign=1.0 if inverter_positive == "import" else -1.0,
    )


@pytest.mark.parametrize(("positive", "p_ess"), [("discharge", -1200.0), ("charge", 1200.0)])
def test_battery_power_in_the_load_reference(positive: str, p_ess: float) -> None:
    assert points(battery_positive=positive).readings(BATTERY, BATTERY_FRAME) == {
        "er/SoC": 61.5,
        "er/P_ESS": p_ess,
        "er/U_ESS": 51.0,
    }


@pytest.mark.parametrize(("positive", "sign"), [("export", -1.0), ("import", 1.0)])
def test_inverter_power_in_the_load_reference(positive: str, sign: float) -> None:
    assert points(inverter_positive=positive).readings(INVERTER, INVERTER_FRAME) == {
        "er/P": sign * 800.0,
        "er/Q": sign * -100.0,
        "er/U": 231.0,
        "er/grid_connected": True,
    }


def test_pv_production_is_negative_and_the_rest() -> None:
    er = points()
    pv = Frame(BATTERY.data, m.PV_P, pack_floats(1500.0, 310.0))
    assert er.readings(BATTERY, pv) == {"er/P_PV": -1500.0, "er/U_PV": 310.0}
    vdc = Frame(INVERTER.data, m.INV_VDC, pack_floats(398.5))
    assert er.readings(INVERTER, vdc) == {"er/U_DC": 398.5}
    error = Frame(BATTERY.error, m.PV_ERROR, b"\x04")
    assert er.readings(BATTERY, error) == {"er/pv_error": 4}
    assert er.readings(INVERTER, Frame(INVERTER.error, m.INV_ERROR, b"\x09")) == {
        "er/inverter_error": 9
    }
    # A frame of the other controller, a confirmation, diagnostics: no points.
    assert er.readings(INVERTER, BATTERY_FRAME) == {}
    assert er.readings(BATTERY, m.confirmation(BATTERY, m.BAT_P, True)) == {}
    assert er.readings(BATTERY, Frame(BATTERY.data, m.EXTRA, pack_floats(1, 2, 3))) == {}


def test_readings_are_the_decimals_the_controller_sent_not_float32_noise() -> None:
    # 51.03854 as a float32 widens to 51.038539886474609 as a double: a GUI showed that.
    frame = Frame(BATTERY.data, m.BAT_P, pack_floats(51.03854, 1234.56, 0.1))
    assert points(battery_positive="charge").readings(BATTERY, frame) == {
        "er/SoC": 51.03854,
        "er/P_ESS": 1234.56,
        "er/U_ESS": 0.1,
    }


def test_an_unsigned_reading_of_minus_zero_is_zero() -> None:
    frame = Frame(BATTERY.data, m.BAT_P, pack_floats(-0.0, 0.0, -0.0))
    readings = points().readings(BATTERY, frame)
    assert [math.copysign(1.0, readings[k]) for k in ("er/SoC", "er/U_ESS")] == [1.0, 1.0]


def test_a_garbled_float_is_not_published() -> None:
    nan = Frame(BATTERY.data, m.BAT_P, pack_floats(float("nan"), 10.0, float("inf")))
    assert points().readings(BATTERY, nan) == {"er/P_ESS": -10.0}


def test_every_published_point_is_declared_with_its_unit() -> None:
    er = points()
    declared = {s.name: s for s in er.specs()}
    frames = [BATTERY_FRAME, Frame(BATTERY.data, m.PV_P, pack_floats(1.0, 2.0))]
    published = {n for f in frames for n in er.readings(BATTERY, f)}
    published |= {n for n in er.readings(INVERTER, INVERTER_FRAME)}
    assert published <= set(declared)
    units = {n: declared[n].unit for n in published}
    assert units["er/P_ESS"] == units["er/P_PV"] == units["er/P"] == "W"
    assert (units["er/SoC"], units["er/U"], units["er/Q"]) == ("%", "V", "var")


# Every (ctrl, flag, length) a controller sends, with payloads of any bytes or of any floats
# (NaN and infinities included) followed by any bytes.
_SHAPES = [
    (c, flag, n)
    for controller in (INVERTER, BATTERY)
    for c in (controller.data, controller.error)
    for flag in range(256)
    for n in range(14)
    if m.accepts(controller, Frame(c, flag, bytes(n)))
]
_payload_of = {
    n: st.one_of(
        st.binary(min_size=n, max_size=n),
        st.lists(st.floats(width=32), min_size=n // 4, max_size=n // 4).map(
            lambda fs, n=n: (pack_floats(*fs) + bytes(n))[:n]
        ),
    )
    for n in range(14)
}
_shapes = st.sampled_from(_SHAPES).flatmap(
    lambda shape: _payload_of[shape[2]].map(lambda p: Frame(shape[0], shape[1], p))
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_shapes.map(encode), st.binary(max_size=20)), max_size=30))
def test_whatever_the_line_carries_the_readings_are_finite_and_declared(
    pieces: list[bytes],
) -> None:
    er = points()
    declared = {s.name for s in er.specs()}
    for controller in (INVERTER, BATTERY):
        decoder = FrameDecoder(accept=lambda f, c=controller: m.accepts(c, f))
        for frame in decoder.feed(b"".join(pieces)):
            for name, value in er.readings(controller, frame).items():
                assert name in declared
                assert not isinstance(value, float) or math.isfinite(value)


@pytest.mark.parametrize("positive", ["discharge", "charge"])
def test_a_zero_reading_is_zero_not_minus_zero(positive: str) -> None:
    # -0.0 shows as "-0.00 W" on every screen (the demo showed it for an idle battery).
    pts = points(battery_positive=positive, inverter_positive="export")
    zeros = {
        **pts.readings(BATTERY, Frame(BATTERY.data, m.BAT_P, pack_floats(50.0, 0.0, 51.0))),
        **pts.readings(BATTERY, Frame(BATTERY.data, m.PV_P, pack_floats(0.0, 0.0))),
        **pts.readings(
            INVERTER,
            Frame(INVERTER.data, m.INV_MEASUREMENTS, pack_floats(0.0, 0.0, 230.0) + b"\x01"),
        ),
    }
    for name in ("er/P_ESS", "er/P_PV", "er/P", "er/Q"):
        assert math.copysign(1.0, zeros[name]) == 1.0, (name, zeros[name])
