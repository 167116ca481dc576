"""The side parser: envelopes, schema checks with OCPP's error codes, sampled values to SMX
points (units, signs), and a fuzz test: whatever arrives, the parser answers a Frame or a
FrameError, never anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.ocpp_proxy.frames import (
    CALL,
    CALLERROR,
    CALLRESULT,
    Frame,
    FrameError,
    call_error,
    check_payload,
    parse,
)
from extensions.ocpp_proxy.meter import sampled_values


def test_envelopes():
    assert parse('[2,"1","Heartbeat",{}]') == Frame(CALL, "1", "Heartbeat", {})
    assert parse('[3, "1", {"status": "Accepted"}]') == Frame(
        CALLRESULT, "1", payload={"status": "Accepted"}
    )  # noqa: E501
    err = parse('[4,"9","NotImplemented","no",{}]')
    assert (err.kind, err.error_code, err.description) == (CALLERROR, "NotImplemented", "no")
    for raw, code in [
        ("{}", "FormationViolation"),
        ('[5,"1",{}]', "ProtocolError"),
        ('[2,1,"Heartbeat",{}]', "ProtocolError"),
        ('[2,"' + "x" * 37 + '","Heartbeat",{}]', "ProtocolError"),
        ('[2,"1","Heartbeat",[]]', "FormationViolation"),
        ("[true]", "ProtocolError"),
    ]:
        with pytest.raises(FrameError) as e:
            parse(raw)
        assert e.value.code == code, raw
    with pytest.raises(FrameError) as e:
        parse("[", "2.0.1")
    assert e.value.code == "FormatViolation"  # 2.0.1's spelling


def test_schemas_name_the_problem():
    check_payload(parse('[2,"1","Heartbeat",{}]'), "Heartbeat", "1.6")
    check_payload(parse('[3,"1",{"currentTime":"2024-01-01T00:00:00Z"}]'), "Heartbeat", "1.6")
    bad = parse('[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError"}]')
    with pytest.raises(FrameError) as e:
        check_payload(bad, "StatusNotification", "1.6")
    assert e.value.code == "ProtocolError" and "'status' is a required property" in str(e.value)
    typed = parse(
        '[2,"1","StatusNotification",{"connectorId":"1","errorCode":"NoError","status":"Available"}]'
    )  # noqa: E501
    with pytest.raises(FrameError) as e:
        check_payload(typed, "StatusNotification", "1.6")
    assert e.value.code == "TypeConstraintViolation"
    # 1.6 limits with one decimal pass (floats would fail multipleOf 0.1)
    period = {"startPeriod": 0, "limit": 6.3}
    schedule = {"chargingRateUnit": "A", "chargingSchedulePeriod": [period]}
    profile = {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": schedule,
        },
    }
    check_payload(Frame(CALL, "1", "SetChargingProfile", profile), "SetChargingProfile", "1.6")
    with pytest.raises(FrameError) as e:
        check_payload(Frame(CALL, "1", "../../x", {}), "../../x", "1.6")
    assert e.value.code == "NotImplemented"


def test_call_error_is_compact():
    assert call_error("7", "ProtocolError", "bad") == '[4,"7","ProtocolError","bad",{}]'


def test_sampled_values_units_and_signs():
    v16 = [
        {"measurand": "Power.Active.Import", "unit": "kW", "value": "7.4"},
        {"measurand": "Power.Active.Export", "unit": "W", "value": "400"},
        {"measurand": "Energy.Active.Import.Register", "unit": "Wh", "value": "18099.0"},
        {"value": "5"},  # default measurand: the energy register, in Wh
        {"measurand": "Current.Import", "phase": "L2", "unit": "A", "value": "15.9"},
        {"measurand": "Voltage", "phase": "L3-N", "unit": "V", "value": "229.1"},
        {"measurand": "Voltage", "phase": "L1-L2", "unit": "V", "value": "400"},  # not U1
        {"measurand": "SoC", "unit": "Percent", "value": "55"},
        {"measurand": "Temperature", "unit": "Celsius", "value": "30"},
        {"measurand": "Power.Active.Import", "format": "SignedData", "value": "abc"},
        {"measurand": "Current.Import", "unit": "A", "value": "NaN"},
    ]
    assert sampled_values(v16) == {"P": 7000.0, "Ap": 0.005, "I2": 15.9, "U3": 229.1, "SoC": 55.0}
    v201 = [
        {
            "measurand": "Power.Active.Import",
            "value": 7.4,
            "unitOfMeasure": {"unit": "W", "multiplier": 3},
        },  # noqa: E501
        {
            "measurand": "Energy.Active.Import.Register",
            "value": 12.5,
            "unitOfMeasure": {"unit": "kWh"},
        },  # noqa: E501
    ]
    assert sampled_values(v201) == {"P": 7400.0, "Ap": 12.5}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # noqa: E501
    max_leaves=20,
)
ENVELOPES = st.tuples(
    st.sampled_from([2, 3, 4, 5, "2", True]),
    st.one_of(st.text(max_size=40), st.integers()),
    st.sampled_from(
        [
            "Heartbeat",
            "MeterValues",
            "StatusNotification",
            "SetChargingProfile",
            "TransactionEvent",
            "X",
            "",
        ]
    ),  # fmt: skip
    JSON,
).map(lambda t: json.dumps(list(t)))


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), ENVELOPES))
def test_fuzz_the_parser_never_fails_otherwise(raw):
    for version in ("1.6", "2.0.1"):
        try:
            frame = parse(raw, version)
        except FrameError as err:
            assert err.code and isinstance(err.id, str)
            continue
        action = frame.action or "Heartbeat"
        try:
            check_payload(frame, action, version)
        except FrameError as err:
            assert err.code
        if frame.kind == CALL and isinstance(frame.payload, dict):
            mv = frame.payload.get("meterValue")
            for m in mv if isinstance(mv, list) else []:
                if isinstance(m, dict) and isinstance(m.get("sampledValue"), list):
                    sampled_values(m["sampledValue"])


@settings(max_examples=100, deadline=None)
@given(st.lists(JSON, max_size=6))
def test_fuzz_sampled_values(samples):
    out = sampled_values(samples)
    assert all(isinstance(v, float) for v in out.values())
