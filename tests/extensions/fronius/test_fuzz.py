"""The Solar API parsers and mappings against anything a device could send: they return data or
a SolarApiError/HttpError, never crash, and never turn garbage into a value that is not a
finite number, a state word or None."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.fronius import solar_points, sunspec_points
from extensions.fronius.http_get import HttpError, _body
from extensions.fronius.solar_api import SolarApiError, parse_api_version, parse_response

from .recordings import FIXTURES

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=24), inner, max_size=6)
    ),
    max_leaves=30,
)
RECORDED = [p.read_bytes() for p in sorted(FIXTURES.glob("*/Get*.json"))]


def _all_keys(doc, out):
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(k)
            _all_keys(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _all_keys(v, out)
    return out


KEYS = sorted(set().union(*(_all_keys(json.loads(r), set()) for r in RECORDED)))
# Objects made of the Solar API's own keys, so the mappings see their fields with wrong values.
solar_like = st.recursive(
    json_values,
    lambda inner: st.dictionaries(st.sampled_from(KEYS), inner, max_size=8),
    max_leaves=40,
)


def _check_values(values):
    for name, value in values.items():
        assert isinstance(name, str)
        assert (
            value is None
            or isinstance(value, str)
            or (isinstance(value, float) and math.isfinite(value))
        ), (name, value)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=400)
    | st.sampled_from(RECORDED).flatmap(lambda raw: st.integers(0, len(raw)).map(lambda n: raw[:n]))
)
def test_any_bytes_parse_to_data_or_a_solar_api_error(raw):
    for parse in (parse_response, parse_api_version):
        try:
            parse(raw)
        except SolarApiError:
            pass


@settings(max_examples=150, deadline=None)
@given(solar_like)
def test_any_json_maps_to_sane_values(doc):
    data = doc if isinstance(doc, dict) else {"x": doc}
    raw = json.dumps({"Head": {"Status": {"Code": 0}}, "Body": {"Data": data}}).encode()
    parsed = parse_response(raw)
    for mapping in (
        solar_points.inverter_common,
        solar_points.inverter_3p,
        solar_points.meter,
        solar_points.storage,
        solar_points.power_flow,
    ):
        _check_values(mapping(parsed))


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["W", "VA", "Hz", "WH", "PhVphA", "module", "ChaState", "ChaSt", "TotWhImp", "PF"]
        ),
        json_values,
        max_size=6,
    )
)
def test_any_decoded_model_maps_to_sane_values(model):
    for mapping in (
        sunspec_points.inverter,
        sunspec_points.mppt,
        sunspec_points.storage,
        sunspec_points.meter,
    ):
        _check_values(mapping(model))


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda status, head, body: f"HTTP/1.1 {status} X\r\n{head}\r\n\r\n".encode() + body,
        st.integers(0, 999),
        st.text(max_size=40),
        st.binary(max_size=50),
    )
)
def test_any_http_answer_is_a_body_or_an_http_error(raw):
    try:
        assert isinstance(_body(raw, "http://x"), bytes)
    except HttpError:
        pass
