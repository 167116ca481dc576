"""OBIS data sets -> vocabulary: the two recorded readouts (values read off the fixture files by
hand), units, load-reference signs, billing snapshots with their dates, unknown codes."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pytest

from extensions.smm.iec62056_21 import parse_data_block, parse_data_message
from extensions.smm.obis import map_datasets, parse_obis

FIXTURES = Path(__file__).parent / "fixtures"
UTC = dt.UTC


def _frame(name: str) -> bytes:
    raw = (FIXTURES / name).read_bytes()
    return raw[raw.index(b"\x02") :]


def _values(result) -> dict[str, float]:
    return {k: r.value for k, r in result.readings.items()}


def test_iskra_mt174_readout_maps_to_checked_values():
    datasets = parse_data_message(_frame("iskra_mt174/readout.txt"))
    assert len(datasets) == 343
    result = map_datasets(datasets, tz=UTC)
    values = _values(result)
    # 1-0:0.9.2*255(0170318) 1-0:0.9.1*255(201455): the meter clock is the source time.
    clock = dt.datetime(2017, 3, 18, 20, 14, 55, tzinfo=UTC)
    assert result.meter_time == clock
    assert result.readings["P"].source_time == clock
    # 1.7.0(0.908*kW) - 2.7.0(0.000*kW) = 908 W import.
    assert values["P"] == 908.0
    assert values["Ap"] == 8048.375 and values["Ap_T1"] == 8048.375  # 1.8.0, 1.8.1
    assert values["Ap_T2"] == values["Ap_T3"] == values["Ap_T4"] == 0.0
    assert values["Am"] == 0.0 and values["Am_T4"] == 0.0
    # 1-0:1.8.0*01(0007904.135*kWh) with 1-0:0.1.2*01(1703010000).
    assert values["Ap.bill01"] == 7904.135
    assert result.readings["Ap.bill01"].source_time == dt.datetime(2017, 3, 1, tzinfo=UTC)
    assert values["Ap.bill15"] == 4224.392
    assert result.readings["Ap.bill15"].source_time == dt.datetime(2016, 1, 1, tzinfo=UTC)
    assert values["Ap_T1.bill07"] == 6334.294  # 1-0:1.8.1*07
    assert result.readings["Ap_T1.bill07"].source_time == dt.datetime(2016, 9, 1, tzinfo=UTC)
    assert {r.quality for r in result.readings.values()} == {"GOOD"}  # F.F.0 = 0000000
    assert "U1" not in values and "I1" not in values  # this readout has none
    # Maximum demand, serial numbers, empty registers: kept, never mapped, never an error.
    assert result.unmapped["1-0:1.6.0*255"] == "(02.468*kW)(1703100930)"
    assert result.unmapped["0-0:C.1.0*255"] == "(63355730)"
    assert result.unmapped["1-0:1.6.2*01"] == "()"


def test_itron_em214_readout_maps_tariffs_and_phase_currents():
    datasets = parse_data_message(_frame("itron_em214/readout.txt"), require_bcc=False)
    result = map_datasets(datasets, tz=UTC)
    assert _values(result) == {
        "P": 490.0,  # 1.7.0(00.49*kW) - 2.7.0(00.00*kW)
        "Ap_T1": 22108.7,  # 1.8.1(022108.7*kWh)
        "Ap_T2": 0.0,
        "Am_T1": 10452.0,  # 2.8.1(010452.0*kWh)
        "Am_T2": 0.0,
        "I1": 0.8,  # 31.7.0(+000.8*A)
        "I2": 0.7,
        "I3": 1.2,
    }
    assert result.meter_time is None and result.readings["P"].source_time is None
    assert result.error_code == "00000000"
    assert result.unmapped["C.8.1"] == "(024616.21*h)"
    assert result.unmapped["0.2.0"] == "(V01.69#EEA3546C)"


def test_units_signs_and_phases():
    block = (
        "1-0:32.7.0(230.1*V)52.7.0(0.2311*kV)72.7.0(229.9*V)\r\n"
        "31.7.0(1.5*A)51.7.0(1500*mA)71.7.0(2*A)\r\n"
        "1.7.0(0*kW)2.7.0(3.25*kW)\r\n"  # exporting 3.25 kW: P < 0
        "21.7.0(100*W)22.7.0(0*W)41.7.0(0*W)42.7.0(1.2*kW)61.7.0(50*W)\r\n"
        "3.7.0(1.5*kvar)4.7.0(500*var)\r\n"
        "14.7.0(49.98*Hz)13.7.0(0.95)\r\n"
        "1.8.0(12345678*Wh)2.8.0(1.5*MWh)3.8.0(12.5*kvarh)4.8.0(700*varh)\r\n"
        "1.8.3(5*kWh)2.8.2(6000*Wh)\r\n"
        "!\r\n"
    )
    values = _values(map_datasets(parse_data_block(block)))
    assert values == {
        "U1": 230.1,
        "U2": 231.1,
        "U3": 229.9,
        "I1": 1.5,
        "I2": 1.5,
        "I3": 2.0,
        "P": -3250.0,
        "P1": 100.0,
        "P2": -1200.0,
        "P3": 50.0,
        "Q": 1000.0,
        "f": 49.98,
        "PF": 0.95,
        "Ap": 12345.678,
        "Am": 1500.0,
        "Rp": 12.5,
        "Rm": 0.7,
        "Ap_T3": 5.0,
        "Am_T2": 6.0,
    }


def test_net_power_register_when_no_import_export_pair():
    values = _values(map_datasets(parse_data_block("1-0:16.7.0*255(-0.42*kW)\r\n!\r\n")))
    assert values == {"P": -420.0}


def test_unknown_and_unconvertible_codes_are_kept_not_errors():
    block = "99.99.99(1)\r\n1.8.0(12*h)\r\n7-0:1.8.0(5*m3)\r\n1.7.0(abc*kW)\r\nfoo(bar)\r\n!\r\n"
    result = map_datasets(parse_data_block(block))
    assert result.readings == {}
    assert set(result.unmapped) == {"99.99.99", "1.8.0", "7-0:1.8.0", "1.7.0", "foo"}


def test_meter_error_register_marks_readings_uncertain():
    result = map_datasets(parse_data_block("F.F(00000010)\r\n1.8.0(1*kWh)\r\n!\r\n"))
    assert result.error_code == "00000010"
    assert result.readings["Ap"].quality == "UNCERTAIN"


def test_meter_clock_in_its_own_time_zone():
    block = "0.9.1(120000)\r\n0.9.2(240715)\r\n1.7.0(1*kW)\r\n!\r\n"
    result = map_datasets(parse_data_block(block), tz=dt.timezone(dt.timedelta(hours=2)))
    assert result.meter_time == dt.datetime(2024, 7, 15, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("address", "key", "billing"),
    [
        ("1-0:1.8.0*255", "1.8.0", None),
        ("1.8.0", "1.8.0", None),
        ("1.8", "1.8.0", None),
        ("1.8.0*03", "1.8.0", 3),
        ("1.8.0&12", "1.8.0", 12),
        ("0-0:C.1.0*255", "C.1.0", None),
        ("F.F", "F.F", None),
        ("1.8.0*95", "1.8.0", 95),
        ("1.8.0*96", "1.8.0", None),  # last day/week/month/year on household meters
        ("1.8.0*101", "1.8.0", None),  # a relative period: no date
    ],
)
def test_obis_addresses(address, key, billing):
    code = parse_obis(address)
    assert code is not None and (code.key, code.billing) == (key, billing)


def test_not_obis():
    assert parse_obis("") is None and parse_obis("hello") is None


def _map(*lines: str, tz: dt.tzinfo = UTC):
    return map_datasets(parse_data_block("\r\n".join(lines) + "\r\n!\r\n"), tz=tz)


def test_billing_snapshots_only_with_a_valid_billing_date():
    result = _map(
        "1.8.0(000123.4*kWh)",
        "1.8.0*00(0000.0*kWh)",  # an unused slot: its date is all zeros
        "0.1.2*00(0000000000)",
        "1.8.0*01(000100.0*kWh)",
        "0.1.2*01(2403010000)",
        "1.8.0*02(000090.0*kWh)",  # no date at all
        "2.8.0*01(000002.5*kWh)",
    )
    assert _values(result) == {"Ap": 123.4, "Ap.bill01": 100.0, "Am.bill01": 2.5}
    assert result.readings["Ap.bill01"].source_time == dt.datetime(2024, 3, 1, tzinfo=UTC)
    assert {"1.8.0*00", "1.8.0*02"} <= set(result.unmapped)


def test_history_registers_are_never_billing_snapshots():
    result = _map("1.8.0(5*kWh)", *(f"1.8.0*{f}(1*kWh)" for f in (96, 97, 98, 99)))
    assert _values(result) == {"Ap": 5.0}
    assert set(result.unmapped) == {"1.8.0*96", "1.8.0*97", "1.8.0*98", "1.8.0*99"}


def test_the_current_value_does_not_depend_on_line_order():
    for lines in (("1.8.0*101(7*kWh)", "1.8.0(9*kWh)"), ("1.8.0(9*kWh)", "1.8.0*101(7*kWh)")):
        assert _values(_map(*lines)) == {"Ap": 9.0}
    assert _values(_map("1.8.0*255(9*kWh)", "1.8.0*254(7*kWh)")) == {"Ap": 9.0}


def test_reactive_quadrants_fill_rp_rm_and_q():
    """R+ = QI + QII, R- = QIII + QIV (OBIS); Q = R+ - R- in the load reference."""
    result = _map(
        "5.8.0(1.5*kvarh)",
        "6.8.0(0.5*kvarh)",
        "7.8.0(3*kvarh)",
        "8.8.0(4000*varh)",
        "5.8.1(1*kvarh)",
        "6.8.1(1*kvarh)",
        "7.8.1(1*kvarh)",
        "8.8.1(1*kvarh)",
        "5.7.0(0.1*kvar)",
        "6.7.0(0.2*kvar)",
        "7.7.0(0.5*kvar)",
        "8.7.0(0.05*kvar)",
    )
    assert _values(result) == {
        "Rp": 2.0,
        "Rm": 7.0,
        "Rp_T1": 2.0,
        "Rm_T1": 2.0,
        "Q": pytest.approx(-250.0),
    }
    assert result.unmapped == {}
    # The meter's own R+/R- registers win, and three quadrants are not enough for a sum.
    own = _map(
        "3.8.0(9*kvarh)", "5.8.0(1*kvarh)", "6.8.0(1*kvarh)", "7.8.0(1*kvarh)", "8.8.0(1*kvarh)"
    )
    assert _values(own) == {"Rp": 9.0, "Rm": 2.0}
    assert _values(_map("5.8.0(1*kvarh)", "6.8.0(1*kvarh)", "7.8.0(1*kvarh)")) == {}


def test_dsmr_clock_with_its_summer_and_winter_flag():
    """The hour 02:00-03:00 on the last Sunday of October occurs twice; the flag says which."""
    ams = zoneinfo.ZoneInfo("Europe/Amsterdam")
    summer = _map("0-0:1.0.0(231029023000S)", "1-0:1.7.0(1*kW)", tz=ams)
    winter = _map("0-0:1.0.0(231029023000W)", "1-0:1.7.0(1*kW)", tz=ams)
    assert summer.meter_time == dt.datetime(2023, 10, 29, 0, 30, tzinfo=UTC)
    assert winter.meter_time == dt.datetime(2023, 10, 29, 1, 30, tzinfo=UTC)
    assert winter.readings["P"].source_time == winter.meter_time
    assert "0-0:1.0.0" not in winter.unmapped
    # Not a clock: another A group, or not a time stamp.
    assert _map("1-0:1.0.0(231029023000W)").meter_time is None
    assert _map("0-0:1.0.0(hello)").meter_time is None


def test_impossible_values_are_not_published_good():
    assert _values(_map("1.8.0(1e400*kWh)")) == {}  # finite as a Decimal, not as a float
    # A negative quadrant register is no energy: no sum is made from it.
    assert (
        _values(_map("5.8.0(-100*kvarh)", "6.8.0(150*kvarh)", "7.8.0(1*kvarh)", "8.8.0(1*kvarh)"))
        == {}
    )
    snap = _map(
        "0.9.1(120000)",
        "0.9.2(240315)",
        "1.8.0(100*kWh)",
        "1.8.0*01(90*kWh)",
        "0.1.2*01(2403010000)",  # fine
        "1.8.0*02(500*kWh)",
        "0.1.2*02(2402010000)",  # above today's index
        "1.8.0*03(80*kWh)",
        "0.1.2*03(2404010000)",  # dated after the meter's clock
    )
    q = {k: r.quality for k, r in snap.readings.items() if ".bill" in k}
    assert q == {"Ap.bill01": "GOOD", "Ap.bill02": "UNCERTAIN", "Ap.bill03": "UNCERTAIN"}
