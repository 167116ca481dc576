"""What the parsers do with values at the edge of what their input format allows: a JSON integer
too large for a float is no data for that one point (the rest of the answer is read); an HTTP
status or Content-Length must be a few ASCII digits (str.isdigit alone takes "²" and other
Unicode digits, which int() then refuses), anything else is an HttpError; a DeviceId that is not
a small ASCII number is sorted as text, never an exception."""

from __future__ import annotations

import json

import pytest

from extensions.fronius import solar_points
from extensions.fronius.energy import EnergyIntegrator
from extensions.fronius.http_get import HttpError, _body
from extensions.fronius.solar_api import _numeric
from extensions.fronius.values import number

HUGE = "9" * 400  # valid JSON; json.loads gives a Python int no float can hold


def test_a_huge_json_integer_is_no_data_for_its_point_only():
    data = json.loads('{"Site": {"P_PV": ' + HUGE + ', "P_Akku": 100}}')
    out = solar_points.power_flow(data, "1")
    assert out["P_PV"] is None and out["P_ESS"] == -100.0
    assert number(int(HUGE)) is None and number(-int(HUGE)) is None
    assert number(10**300, 1e10) is None  # finite int, infinite product
    meter = solar_points.meter(
        json.loads('{"0": {"PowerReal_P_Sum": ' + HUGE + ', "Frequency_Phase_Average": 50}}')
    )
    assert meter == {"P": None, "f": 50.0}


def test_a_huge_integer_in_the_energy_state_is_no_total(tmp_path):
    state = tmp_path / "energy.json"
    state.write_text('{"fronius/Ap": ' + HUGE + ', "fronius/Am": 12.5}')
    assert EnergyIntegrator(state).totals == {"fronius/Am": 12.5}


OK = b"HTTP/1.0 200 OK\r\n"


@pytest.mark.parametrize(
    "length",
    [
        b"\xb2",  # latin-1 "superscript two": str.isdigit() is true, int() refuses it
        b"\xb9\xb3",
        b"1" * 13,  # a 10 TB body: no device sends one
        b"5000" * 1200,  # over int()'s 4300-digit limit
        b"-1",
        b"",
        b"twelve",
    ],
)
def test_a_content_length_that_is_not_a_few_ascii_digits_is_an_http_error(length):
    with pytest.raises(HttpError, match="Content-Length .* is not a length"):
        _body(OK + b"Content-Length: " + length + b"\r\n\r\n{}", "http://x/")


def test_a_good_content_length_still_cuts_and_checks_the_body():
    assert _body(OK + b"Content-Length: 2\r\n\r\n{}trailing", "http://x/") == b"{}"
    with pytest.raises(HttpError, match="cut short"):
        _body(OK + b"Content-Length: 000000000010\r\n\r\n{}", "http://x/")
    assert _body(OK + b"\r\n{}", "http://x/") == b"{}"  # no Content-Length: up to the close


@pytest.mark.parametrize("status", [b"\xb2\xb2\xb2", b"2000", b"20", b"+200", b"2" * 5000])
def test_a_status_that_is_not_three_ascii_digits_is_an_http_error(status):
    with pytest.raises(HttpError, match="not an HTTP answer|HTTP 20 OK"):
        _body(b"HTTP/1.0 " + status + b" OK\r\n\r\n{}", "http://x/")


def test_device_ids_sort_as_numbers_or_as_text_never_an_exception():
    ids = ["10", "\u00b2", "2", "9" * 5000, "x", "\u0663"]  # "²", and an Arabic-Indic 3
    assert sorted(ids, key=_numeric) == ["2", "10", "9" * 5000, "x", "\u00b2", "\u0663"]
