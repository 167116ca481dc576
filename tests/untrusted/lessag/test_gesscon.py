"""GESSCon: the profile message against its JSON Schema (docs/), validation with error replies
naming the field, the profile kept across restarts and rolled over at local midnight, the
priorities, and the control loop hour by hour on a fake clock; then end to end through a real
Mosquitto, a real core and a battery owner."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import paho.mqtt.publish as mqtt_publish
import pytest

from extensions.sdk import Applied, Clamped, Extension
from extensions.sdk.testing import until
from smx.sdk import SetpointState, parse_settings
from tests.untrusted.lessag.broker import Subscriber
from tests.untrusted.lessag.conftest import agent_config, running, sample, write
from untrusted.lessag.ess_control import EssControl, decide
from untrusted.lessag.profile import ProfileError, ProfileStore, parse_profile
from untrusted.lessag.settings import EssConfig

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "docs/lessag-gesscon-profile.schema.json").read_text()
)
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
ROME = ZoneInfo("Europe/Rome")
DAY = dt.date(2024, 5, 1)
TODAY_POWER = [1000.0 * (h - 12) for h in range(24)]  # -12 kW at 00:00 ... +11 kW at 23:00
TODAY_PRIO = [h % 3 for h in range(24)]
NEXT_POWER = [-500.0] * 24
NEXT_PRIO = [2] * 24


def message(day: dt.date = DAY, **over: Any) -> dict[str, Any]:
    msg = {
        "id": "p-1",
        "Date_crt": day.isoformat(),
        "Date_next": (day + dt.timedelta(days=1)).isoformat(),
        "Period": 60,
        "P_bat_DC_set_now": TODAY_POWER,
        "Priority_set_now": TODAY_PRIO,
        "P_bat_DC_set_next": NEXT_POWER,
        "Priority_set_next": NEXT_PRIO,
    }
    msg.update(over)
    return {k: v for k, v in msg.items() if v is not None}


def raw(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode()


BAD = {  # message -> the field its error names
    "malformed": (b"{not json", "$"),
    "array": (b"[1, 2]", "$"),
    "short": (raw(message(P_bat_DC_set_now=[0.0] * 23)), "P_bat_DC_set_now"),
    "string power": (raw(message(P_bat_DC_set_now=["1"] + [0.0] * 23)), "P_bat_DC_set_now[0]"),
    "out of range": (raw(message(P_bat_DC_set_next=[0.0] * 5 + [2e6] + [0.0] * 18)),
                     "P_bat_DC_set_next[5]"),
    "priority 3": (raw(message(Priority_set_now=[0] * 7 + [3] + [0] * 16)), "Priority_set_now[7]"),
    "period": (raw(message(Period=15)), "Period"),
    "unknown field": (raw(message(Extra=1)), "Extra"),
    "no date": (raw(message(Date_crt=None)), "Date_crt"),
    "bad date": (raw(message(Date_crt="2024-13-01")), "Date_crt"),
    "wrong date": (raw(message(DAY - dt.timedelta(days=1))), "Date_crt"),
    "next not after": (raw(message(Date_next="2024-05-05")), "Date_next"),
    "oversized": (raw(message(id="x" * 60, pad=None)) + b" " * 20000, "$"),
}  # fmt: skip
SEMANTIC = {"wrong date", "next not after", "oversized"}  # beyond what a schema can say


def test_a_valid_message_passes_both_the_schema_and_the_agent():
    jsonschema.validate(message(), SCHEMA, format_checker=FORMATS)
    p = parse_profile(raw(message()), DAY, 16384)
    assert p.today.power == TODAY_POWER and p.tomorrow and p.tomorrow.date == "2024-05-02"


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_message_is_refused_naming_the_field(case):
    payload, field = BAD[case]
    with pytest.raises(ProfileError) as err:
        parse_profile(payload, DAY, 16384)
    assert err.value.field == field, str(err.value)
    if case not in SEMANTIC:  # the schema in docs/ says the same
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SCHEMA, format_checker=FORMATS)


def test_the_profile_survives_a_restart_and_rolls_over_at_local_midnight(tmp):
    store = ProfileStore(tmp / "profile.json")
    store.replace(parse_profile(raw(message()), DAY, 16384))
    again = ProfileStore(tmp / "profile.json")  # a restarted agent
    assert again.day(DAY) is not None and again.day(DAY).power == TODAY_POWER  # type: ignore[union-attr]
    tomorrow = again.day(DAY + dt.timedelta(days=1))
    assert tomorrow is not None and tomorrow.power == NEXT_POWER
    assert ProfileStore(tmp / "profile.json").day(DAY + dt.timedelta(days=1)) is not None
    assert again.day(DAY + dt.timedelta(days=2)) is None  # nothing for the day after


CFG = parse_settings(EssConfig, {"max_charge": 5000, "max_discharge": 4000, "soc_min": 20})


@pytest.mark.parametrize(
    ("rec", "prio", "live", "value", "accept"),
    [
        # 0: self-consumption, the recommendation ignored: P_set = P_battery - P_pcc
        (3000, 0, {"battery": 1000, "pcc": 500, "soc": 50}, 500, 1),
        (3000, 0, {"battery": 0, "pcc": -2000, "soc": 50}, 2000, 1),  # exporting: charge
        (3000, 0, {"battery": 0, "pcc": 9000, "soc": 50}, -4000, 1),  # within the limits
        (3000, 0, {"battery": 0, "pcc": 900, "soc": 20}, 0, 1),  # reserve: no discharge
        (3000, 0, {"battery": None, "pcc": 900, "soc": 50}, None, 0),  # unknown: no request
        (None, None, {"battery": 0, "pcc": -100, "soc": 50}, 100, 0),  # no profile: local
        # 1: the recommendation within the limits and the SoC window
        (-3000, 1, {"soc": 50}, -3000, 1),
        (-3000, 1, {"soc": 20}, 0, 0),  # at the reserve
        (-3000, 1, {"soc": None}, 0, 0),  # reserve unknown: no discharge
        (8000, 1, {"soc": 50}, 5000, 0),  # power limit
        (2000, 1, {"soc": 96}, 0, 0),  # full
        # 2: strictly: the owner's limits only
        (8000, 2, {"soc": 96}, 8000, 1),
        (-3000, 2, {"soc": 5}, -3000, 1),
    ],
)
def test_priority_semantics(rec, prio, live, value, accept):
    d = decide(rec, prio, live, CFG)
    assert (d.value, d.accept) == (value, accept), d.why


class FakeCore:
    def __init__(self) -> None:
        self.requests: list[tuple[str, float, float]] = []

    async def request(self, name: str, value: float, valid_for: float) -> SetpointState:
        self.requests.append((name, value, valid_for))
        return SetpointState(f"sp{len(self.requests)}", name, value, "PENDING")


async def test_hour_by_hour_on_a_fake_clock(tmp):
    store = ProfileStore(tmp / "profile.json")
    store.replace(parse_profile(raw(message()), DAY, 16384))
    clock = [dt.datetime(2024, 5, 1, 0, 30, tzinfo=ROME)]
    core, reports = FakeCore(), []
    ctl = EssControl(CFG, store, core.request, reports.append, lambda: clock[0])
    for what, v in {"battery": 0.0, "pcc": 300.0, "soc": 50.0}.items():
        ctl.update(what, v, "GOOD")
    for hour in range(24):
        clock[0] = dt.datetime(2024, 5, 1, hour, 30, tzinfo=ROME)
        await ctl.tick()
    expected = [decide(TODAY_POWER[h], TODAY_PRIO[h], ctl.live, CFG).value for h in range(24)]
    assert [v for _, v, _ in core.requests] == expected
    assert expected[:3] == [-300.0, -4000.0, -10000.0]  # 0 local, 1 limited, 2 strict
    assert {(n, vf) for n, _, vf in core.requests} == {("ess/P_set", 15.0)}  # 3 periods
    clock[0] = dt.datetime(2024, 5, 2, 0, 0, 1, tzinfo=ROME)  # past local midnight
    await ctl.tick()
    assert core.requests[-1][1] == -500.0  # the next day's profile, priority 2
    # The owner's answers, as the requester stream brings them, become the report.
    ctl.outcome(SetpointState("sp25", "ess/P_set", -500.0, "UNCONFIRMED", reason="relayed"))
    last = json.loads(reports[-1])
    assert (last["status"], last["Priority_accept"], last["reason"]) == (
        "UNCONFIRMED",
        None,
        "relayed",
    )
    ctl.outcome(SetpointState("sp25", "ess/P_set", -500.0, "APPLIED", applied_value=-500.0))
    last = json.loads(reports[-1])
    assert last["P_bat_DC_set"] == -500.0 and last["P_bat_DC_applied"] == -500.0
    assert (last["Priority_set"], last["Priority_accept"], last["Date_crt"]) == (2, 1, "2024-05-02")
    ctl.outcome(SetpointState("sp25", "ess/P_set", -500.0, "CLAMPED", applied_value=-400.0))
    assert json.loads(reports[-1])["Priority_accept"] == 0


async def test_end_to_end_profile_control_and_errors(site, broker, tmp):
    """A profile over MQTT -> accepted; the battery owner clamps; the report says so; bad
    messages get error replies naming the field and leave the control as it was."""
    now = dt.datetime.now(ROME).replace(hour=2, minute=15)
    prio = [1] * 24
    power = [8000.0 if h == 2 else 0.0 for h in range(24)]
    good = message(now.date(), P_bat_DC_set_now=power, Priority_set_now=prio)
    owner = Extension(site.env("ess"))

    @owner.on_setpoint("ess/P_set")
    async def set_power(req):
        return Clamped(4500.0, "inverter limit") if req.value > 4500 else Applied()

    await owner.start()
    await write(site, "smm", [sample("smm/P", 200.0, now.timestamp())])
    owner.client.publish_sample(sample("ess/P", 0.0, now.timestamp()))
    owner.client.publish_sample(sample("ess/SoC", 60.0, now.timestamp()))
    prefix = "usm-t/lessag"
    sub = Subscriber(broker, [f"{prefix}/gesscon/#"])
    cfg = agent_config(broker, tmp, ess={"enabled": True, "period": 1, "timezone": "Europe/Rome"})
    try:
        await until(lambda: owner.client.declared("ess/P_set"))
        async with running(site, cfg, clock=lambda: now) as agent:
            await until(lambda: agent.link.connected)
            send = lambda body: mqtt_publish.single(  # noqa: E731
                f"{prefix}/gesscon/profile", body, qos=1, port=broker.port
            )
            send(raw(good))
            await until(lambda: sub.on(f"{prefix}/gesscon/accepted"), what="accepted")

            def clamped() -> list[dict[str, Any]]:
                got = [json.loads(m.payload) for m in sub.on(f"{prefix}/gesscon/report")]
                return [r for r in got if r["status"] == "CLAMPED"]

            report = (await until(clamped, what="a report of the clamp"))[0]
            assert report["P_bat_DC_rec"] == 8000.0 and report["P_bat_DC_set"] == 5000.0
            assert report["P_bat_DC_applied"] == 4500.0 and report["Priority_set"] == 1
            assert report["Priority_accept"] == 0 and report["reason"] == "inverter limit"
            send(BAD["malformed"][0])
            send(raw(message(now.date(), P_bat_DC_set_next=[0.0] * 5 + [2e6] + [0.0] * 18)))
            send(BAD["oversized"][0])
            send(raw(message(now.date() - dt.timedelta(days=1))))  # wrong date
            errors = await until(
                lambda: (
                    len(sub.on(f"{prefix}/gesscon/error")) >= 4
                    and sub.on(f"{prefix}/gesscon/error")
                )
            )
            fields = [json.loads(m.payload)["field"] for m in errors]
            assert fields == ["$", "P_bat_DC_set_next[5]", "$", "Date_crt"]
            assert agent.ess.store.profile is not None
            assert agent.ess.store.profile.today.power == power  # control unchanged
            assert agent.health()["state"] == "running"
    finally:
        sub.close()
        await owner.stop()


async def test_the_simulator_sends_a_profile_the_agent_accepts(broker, tmp):
    import os
    import subprocess
    import sys

    (tmp / "sim.json").write_text(json.dumps({"port": broker.port, "prefix": "sim/lessag"}))
    sub = Subscriber(broker, ["sim/lessag/gesscon/profile"])
    env = {**os.environ, "SMX_CONFIG": str(tmp / "sim.json"), "SMX_NAME": "gesscon-sim"}
    sim = subprocess.Popen([sys.executable, "-m", "untrusted.lessag.gesscon_sim"], env=env)
    try:
        got = await until(lambda: sub.on("sim/lessag/gesscon/profile"), what="a profile")
        today = dt.datetime.now().astimezone().date()
        profile = parse_profile(got[0].payload, today, 16384)
        assert profile.today.priority[19] == 2 and profile.today.power[12] == 3000.0
        # Retained: an agent that subscribes later (the demo starts it after the simulator)
        # gets the profile at once.
        late = Subscriber(broker, ["sim/lessag/gesscon/profile"], client_id="late")
        try:
            kept = await until(lambda: late.on("sim/lessag/gesscon/profile"), what="retained")
            assert kept[0].retain and kept[0].payload == got[0].payload
        finally:
            late.close()
    finally:
        sim.terminate()
        assert sim.wait(10) == 0
        sub.close()


class SupersedingCore(FakeCore):
    """The core as it is: a new request supersedes the previous one, and the outcome stream can
    bring that SUPERSEDED before the new request's reply."""

    def __init__(self) -> None:
        super().__init__()
        self.ctl: EssControl | None = None

    async def request(self, name: str, value: float, valid_for: float) -> SetpointState:
        if self.requests and self.ctl is not None:
            old = f"sp{len(self.requests)}"
            self.ctl.outcome(SetpointState(old, name, self.requests[-1][1], "SUPERSEDED"))
        return await super().request(name, value, valid_for)


async def test_our_own_next_request_is_not_reported_as_superseded(tmp):
    """Each period's request supersedes the previous one: that was once reported as
    SUPERSEDED, Priority_accept 0, in the new period's report."""
    store = ProfileStore(tmp / "profile.json")
    store.replace(parse_profile(raw(message()), DAY, 16384))
    clock = [dt.datetime(2024, 5, 1, 2, 30, tzinfo=ROME)]
    core, reports = SupersedingCore(), []
    ctl = EssControl(CFG, store, core.request, reports.append, lambda: clock[0])
    core.ctl = ctl
    for what, v in {"battery": 0.0, "pcc": 300.0, "soc": 50.0}.items():
        ctl.update(what, v, "GOOD")
    for i in range(1, 4):
        await ctl.tick()
        ctl.outcome(SetpointState(f"sp{i}", "ess/P_set", -10000.0, "APPLIED", applied_value=-1e4))
    got = [json.loads(r) for r in reports]
    assert [(r["status"], r["setpoint_id"]) for r in got] == [
        ("APPLIED", "sp1"),
        ("APPLIED", "sp2"),
        ("APPLIED", "sp3"),
    ]
    assert all(r["Priority_accept"] == 1 for r in got)


async def test_end_to_end_no_false_superseded_reports(site, broker, tmp):
    """A real core and owner, a short period: every report names its own request."""
    now = dt.datetime.now(ROME).replace(hour=2, minute=15)
    good = message(now.date(), Priority_set_now=[2] * 24, P_bat_DC_set_now=[1000.0] * 24)
    owner = Extension(site.env("ess"))

    @owner.on_setpoint("ess/P_set")
    async def set_power(req):
        return Applied()

    await owner.start()
    prefix = "usm-t/lessag"
    sub = Subscriber(broker, [f"{prefix}/gesscon/#"], client_id="sub-superseded")
    cfg = agent_config(broker, tmp, ess={"enabled": True, "period": 1, "timezone": "Europe/Rome"})
    try:
        await until(lambda: owner.client.declared("ess/P_set"))
        async with running(site, cfg, clock=lambda: now) as agent:
            await until(lambda: agent.link.connected)
            mqtt_publish.single(f"{prefix}/gesscon/profile", raw(good), qos=1, port=broker.port)

            def applied() -> list[dict[str, Any]]:
                got = [json.loads(m.payload) for m in sub.on(f"{prefix}/gesscon/report")]
                return [r for r in got if r["Priority_set"] == 2 and r["status"] == "APPLIED"]

            await until(lambda: len(applied()) >= 5, timeout=15, what="5 periods applied")
        reports = [json.loads(m.payload) for m in sub.on(f"{prefix}/gesscon/report")]
        assert not [r for r in reports if r["status"] == "SUPERSEDED"], reports
        ids = [r["setpoint_id"] for r in reports if r["status"] == "APPLIED"]
        assert all(ids) and len(ids) == len(set(ids))
    finally:
        sub.close()
        await owner.stop()


@pytest.mark.parametrize(
    "field", ["Date_crt", "Date_next", "Period", "P_bat_DC_set_now", "Priority_set_next"]
)
def test_a_missing_field_is_called_missing(field):
    """Once `Period: must be 60 ..., got None`: a field left out says so."""
    msg = message()
    del msg[field]
    with pytest.raises(ProfileError) as err:
        parse_profile(raw(msg), DAY, 16384)
    assert err.value.field == field and err.value.problem.startswith("missing"), str(err.value)
    assert "None" not in str(err.value)
