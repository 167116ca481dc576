"""The payload formats, byte for byte against golden files (tests/untrusted/lessag/golden/),
SenML against RFC 8428's rules, and the line protocol against a real InfluxDB 1.x.

`LESSAG_REGOLD=1 pytest tests/untrusted/lessag/test_formats.py` rewrites the golden files;
review the diff before committing it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from extensions.sdk.testing import until
from smx.sdk import PointUpdate
from tests.untrusted.lessag.broker import Subscriber
from tests.untrusted.lessag.conftest import agent_config, running, sample, write
from tests.untrusted.lessag.influx import InfluxDB, influxd_available
from tests.untrusted.lessag.senml_rules import problems
from untrusted.lessag.formats import influx_line, senml_json

GOLDEN = Path(__file__).parent / "golden"
T = 1714557600.125  # 2024-05-01T10:00:00.125Z


def reading(name: str, value: object, unit: str, quality: str = "GOOD", dt: float = 0.0):
    return PointUpdate(name, value, unit, quality, T + dt, 1)  # type: ignore[arg-type]


METER = [
    reading("smm/U1", 230.5, "V"),
    reading("smm/I1", 5.25, "A"),
    reading("smm/P1", 1207.5, "W"),
    reading("smm/P", 3500.0, "W", dt=0.5),  # the newest source time dates the line
    reading("smm/Q", -120.0, "var"),
    reading("smm/PF", 0.98, "1"),
    reading("smm/f", 50.01, "Hz"),
    reading("smm/Ap", 12345.67, "kWh", "DERIVED"),
    reading("smm/Am", 0.5, "kWh"),
    reading("smm/Rp", 10.0, "kvarh", "UNCERTAIN"),
    reading("smm/Rm", 2.0, "kvarh", "BAD"),
    reading("smm/I2", 7.0, "A", "STALE"),
]
BATTERY = [
    reading("usm1/ess/P", -2000.0, "W"),
    reading("usm1/ess/SoC", 55.5, "%"),
    reading("usm1/ess/ESS_state", 'DIS"CHARGING, x', ""),
    reading("usm1/ess/cycles", 412, ""),
    reading("usm1/ess/ok", True, ""),
]


def golden(name: str, got: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("LESSAG_REGOLD"):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(got)
    assert got == path.read_bytes(), f"{name} differs from its golden file"


@pytest.mark.parametrize("marked", [True, False], ids=["mark", "omit"])
def test_line_protocol_is_byte_exact(marked):
    mode = "mark" if marked else "omit"
    golden(f"meter.{mode}.influx", influx_line("S4G-GW-EDYNA-0016", 0, METER, marked))
    golden(f"battery.{mode}.influx", influx_line("usm 1,ess", 3, BATTERY, marked))


@pytest.mark.parametrize("marked", [True, False], ids=["mark", "omit"])
def test_senml_is_byte_exact_and_follows_rfc8428(marked):
    mode = "mark" if marked else "omit"
    meter = senml_json("usm-0017/smm/", METER, marked)
    battery = senml_json("usm-0017/usm1/ess/", BATTERY, marked)
    golden(f"meter.{mode}.senml.json", meter)
    golden(f"battery.{mode}.senml.json", battery)
    assert problems(meter) == [] and problems(battery) == []


def test_nothing_usable_is_no_message():
    bad = [reading("smm/P", 1.0, "W", "BAD")]
    assert influx_line("m", 0, bad, marked=False) == b""
    assert senml_json("b/", bad, marked=False) == b""


def test_the_senml_checker_catches_what_rfc8428_forbids():
    assert problems(b'[{"n":"-x","v":1}]')  # a name starts with a letter or digit
    assert problems(b'[{"n":"x","v":1,"vs":"a"}]')  # one value
    assert problems(b'[{"n":"x","u":"kW/h","v":1}]')  # unregistered unit
    assert problems(b'[{"n":"x","v":1,"t":5}]')  # relative time where absolute is meant


async def test_published_through_mosquitto_byte_exact(site, broker, tmp):
    """From the core to a subscriber: the same bytes as the golden files say."""
    t = 1714557600.5
    await write(
        site,
        "smm",
        [
            sample("smm/U1", 230.5, t),
            sample("smm/P", 3500.0, t),
            sample("smm/f", 50.01, t),
            sample("smm/Ap", 12345.67, t, "BAD"),
        ],
    )
    topics = {"senml": "usm-t/lessag/smm/data", "influx": "dwh/S4G-GW-1/smm"}
    sub = Subscriber(broker, list(topics.values()))
    try:
        for fmt, topic in topics.items():
            device = {"id": "smm", "type": "SMM", "format": fmt}
            if fmt == "influx":
                device |= {"topic": "dwh/S4G-GW-1/{device}", "measurement": "S4G-GW-1"}
            cfg = agent_config(broker, tmp, devices=[device])
            async with running(site, cfg):
                got = await until(lambda topic=topic: sub.on(topic), what=f"{fmt} message")
            golden(f"core-smm.{fmt}", got[0].payload)
        assert problems(sub.on(topics["senml"])[0].payload) == []
    finally:
        sub.close()


@pytest.mark.skipif(not influxd_available(), reason="influxd (Debian package influxdb) missing")
def test_a_real_influxdb_takes_the_line_protocol(tmp):
    db = InfluxDB(tmp / "influx")
    try:
        db.query("CREATE DATABASE dwh")
        body = b"".join(
            [
                influx_line("S4G-GW-EDYNA-0016", 0, METER, True),
                influx_line("usm 1,ess", 3, BATTERY, True),
                (GOLDEN / "core-smm.influx").read_bytes(),
            ]
        )
        assert db.write("dwh", body) == 204
        got = db.query('SELECT * FROM "S4G-GW-EDYNA-0016"', "dwh")["results"][0]["series"][0]
        row = dict(zip(got["columns"], got["values"][0], strict=True))
        assert row["time"] == 1714557600_625_000_000
        assert (row["P"], row["U1"], row["Ap"], row["Type"]) == (3500.0, 230.5, 12345.67, 0)
        assert (row["Rm"], row["q_Rm"], row["q_I2"]) == (2.0, "BAD", "STALE")
        got = db.query('SELECT * FROM "usm 1,ess"', "dwh")["results"][0]["series"][0]
        row = dict(zip(got["columns"], got["values"][0], strict=True))
        assert row["ESS_state"] == 'DIS"CHARGING, x' and row["cycles"] == 412
        assert row["ok"] is True and row["Type"] == 3
        got = db.query('SELECT "P", "q_Ap" FROM "S4G-GW-1"', "dwh")["results"][0]["series"][0]
        assert got["values"][0][1:] == [3500.0, "BAD"]
    finally:
        db.stop()


async def test_on_change_publishes_a_device_beyond_its_deadband_only():
    from smx.sdk import parse_settings
    from untrusted.lessag.measurements import Measurements, build_devices
    from untrusted.lessag.settings import LessagConfig

    cfg = parse_settings(
        LessagConfig,
        {"on_change": True, "deadband": {"P": 100}, "min_gap": 0, "devices": [{"id": "smm"}]},
    )
    sent: list[tuple[str, bytes]] = []
    m = Measurements(cfg, build_devices(cfg, "s", "s/lessag"), lambda t, p: sent.append((t, p)))
    m.update(reading("smm/P", 1000.0, "W"))  # first value: beyond any band
    m.update(reading("smm/f", 50.0, "Hz"))  # the same watch message: in the same publish
    await asyncio.sleep(0)
    assert len(sent) == 1 and b'"n":"f"' in sent[0][1]
    m.update(reading("smm/P", 1099.0, "W"))  # within 100 W of what was sent
    m.update(reading("smm/U1", 250.0, "V"))  # no deadband: waits for the period
    await asyncio.sleep(0)
    assert len(sent) == 1
    m.update(reading("smm/P", 1101.0, "W", dt=1))
    await asyncio.sleep(0)
    assert len(sent) == 2 and sent[1][0] == "s/lessag/smm/data"
    assert b'"n":"U1"' in sent[1][1]  # the whole device goes, with the latest of each point
