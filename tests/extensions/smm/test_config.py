"""The smm config table through the extension's own setup: every meter entry is checked by the
SDK's typed settings (config.py), and each mistake is one line naming the key as written in
site.toml; what a schema cannot check (the register map, serial or host, the device ids the
extension owns) is named the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extensions.sdk import Extension, SetupError
from extensions.smm.__main__ import setup
from extensions.smm.config import DEFAULT_POINTS, IecMeterConfig, ModbusMeterConfig
from smx.client import Credentials
from smx.process_env import ProcessEnv

TCP = {"device": "pv", "map": "eastron_sdm630", "unit": 1, "host": "192.0.2.10"}
IEC = {"device": "smm", "port": "/dev/ttyUSB-smm-test"}


def extension(tmp_path: Path, config: dict[str, Any]) -> Extension:
    """The smm extension as the supervisor would start it (its config file written), not
    connected: setup needs no core."""
    (tmp_path / "smm.json").write_text(json.dumps(config))
    creds = Credentials(tmp_path / "ca.crt", tmp_path / "smm.crt", tmp_path / "smm.key")
    env = ProcessEnv(
        name="smm",
        target=f"unix://{tmp_path / 'core.sock'}",
        credentials=creds,
        devices=("smm", "pv"),
        home=tmp_path,
        config_file=tmp_path / "smm.json",
    )
    return Extension(env)


def mistake(tmp_path: Path, config: dict[str, Any]) -> str:
    with pytest.raises(SetupError) as err:
        setup(extension(tmp_path, config))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {"modbus": [{**TCP, "prot": 502}]},
            "extensions.smm.config.modbus[0].prot: unknown key (did you mean 'port'? allowed: ",
            id="modbus-unknown-key",
        ),
        pytest.param(
            {"modbus": [{**TCP, "unit": "x"}]},
            'extensions.smm.config.modbus[0].unit: expected an integer, got "x"',
            id="modbus-wrong-type",
        ),
        pytest.param(
            {"iec62056": [{**IEC, "intervall": 5}]},
            "extensions.smm.config.iec62056[0].intervall: unknown key "
            "(did you mean 'interval'? allowed: ",
            id="iec-unknown-key",
        ),
        pytest.param(
            {"iec62056": [{**IEC, "interval": "fast"}]},
            'extensions.smm.config.iec62056[0].interval: expected a duration like "30d", '
            'got "fast"',
            id="iec-not-a-duration",
        ),
        pytest.param(
            {"iec62056": [{**IEC, "initial_baud": 12345}]},
            "extensions.smm.config.iec62056[0].initial_baud: must be a standard rate "
            "(300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200), not 12345",
            id="iec-odd-baud",
        ),
        pytest.param(
            {"modbus": [TCP, {**TCP, "unit": 248}]},
            "extensions.smm.config.modbus[1].unit: must be between 1 and 247, got 248",
            id="modbus-out-of-range",
        ),
        pytest.param(
            {"modbus": [{**TCP, "parity": "X"}]},
            'extensions.smm.config.modbus[0].parity: "X" is not a choice (one of N, E, O)',
            id="modbus-line-key",
        ),
        pytest.param(
            {"iec62056": [{**IEC, "timezone": "Europe/Rom"}]},
            "extensions.smm.config.iec62056[0].timezone: unknown time zone 'Europe/Rom' "
            "(did you mean 'Europe/Rome'?)",
            id="iec-time-zone",
        ),
        pytest.param(
            {"modbus": [{**TCP, "map": "eastrn_sdm630"}]},
            "extensions.smm.config.modbus[0].map: no register map 'eastrn_sdm630' "
            "(did you mean 'eastron_sdm630'? shipped: ",
            id="modbus-map-name",
        ),
        pytest.param(
            {"modbus": [{**TCP, "serial": "/dev/ttyUSB1"}]},
            "extensions.smm.config.modbus[0]: give either serial (RTU) or host (TCP), not both",
            id="modbus-serial-and-host",
        ),
        pytest.param(
            {"modbus": [{**TCP, "device": "ev1"}]},
            "extensions.smm.config.modbus[0].device: 'ev1' is not one of this extension's "
            "devices ['pv', 'smm'] (add it to `devices` in site.toml)",
            id="device-not-owned",
        ),
        pytest.param(
            {"modbus": [TCP], "iec62056": [{**IEC, "device": "pv"}]},
            "extensions.smm.config.iec62056[0].device: 'pv' is already the device of modbus[0]",
            id="device-twice",
        ),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_key(tmp_path, config, expected):
    message = mistake(tmp_path, config)
    assert message.startswith(expected), message


def test_a_good_config_builds_every_meter_with_its_defaults(tmp_path):
    config = {
        "modbus": [{**TCP, "response_timeout": "200ms", "interval": "2s", "ct": 40}],
        "iec62056": [{**IEC, "interval": 15, "mode": "c", "timezone": "UTC"}],
    }
    ext = extension(tmp_path, config)
    setup(ext)
    (modbus, _), (iec, _) = ext.devices
    assert modbus.name == "pv" and modbus.interval == 2.0 and modbus.meter.ratios.ct == 40.0
    assert modbus.link.config.response_timeout == 0.2 and modbus.link.config.port == 502
    assert modbus.meter.index_max == modbus.map.index_max  # the map's, not overridden
    assert iec.name == "iec:smm" and iec.interval == 15.0 and iec.timeout == 65.0
    assert iec.client.mode == "C" and iec.bus == IEC["port"] and iec.points == DEFAULT_POINTS


def test_the_schemas_keep_every_key_and_default():
    modbus = ModbusMeterConfig(device="pv", map="eastron_sdm630", unit=1, host="h")
    assert (modbus.port, modbus.baudrate, modbus.parity, modbus.stopbits, modbus.bytesize) == (
        502,
        9600,
        "N",
        1,
        8,
    )
    assert (modbus.interval, modbus.response_timeout, modbus.max_backoff) == (1.0, 0.3, 30.0)
    assert (modbus.ct, modbus.vt, modbus.index_max) == (1.0, 1.0, None)
    iec = IecMeterConfig(port="/dev/x")
    assert (iec.device, iec.mode, iec.initial_baud, iec.interval, iec.read_timeout) == (
        "smm",
        "C",
        300,
        10.0,
        60.0,
    )
    assert (iec.char_timeout, iec.reaction_time, iec.answer_timeout) == (1.5, 0.2, 1.5)
    assert (iec.require_bcc, iec.max_backoff, iec.bus_gap, iec.index_max) == (
        True,
        60.0,
        0.0,
        0.0,
    )


def test_without_timezone_the_meter_clock_follows_the_box_zone_with_its_dst(monkeypatch):
    """The default zone keeps its daylight-saving rules: a fixed offset taken at start
    (winter) would put a summer reading an hour off."""
    import datetime as dt

    from extensions.smm.iec_device import IecMeterDevice
    from extensions.smm.obis import parse_meter_datetime

    monkeypatch.setenv("TZ", "Europe/Berlin")
    device = IecMeterDevice(IecMeterConfig(port="/dev/null"))
    summer = parse_meter_datetime("240715", "120000", device.tz)
    winter = parse_meter_datetime("240115", "120000", device.tz)
    assert summer == dt.datetime(2024, 7, 15, 10, 0, tzinfo=dt.UTC)
    assert winter == dt.datetime(2024, 1, 15, 11, 0, tzinfo=dt.UTC)


def test_the_ratings_of_the_config_reach_the_meter():
    from extensions.smm.iec_device import IecMeterDevice

    device = IecMeterDevice(IecMeterConfig(port="/dev/null", u_nominal=120.0, i_max=5.0))
    assert device.meter.readings({"U1": 200.0})["smm/U1"].quality == "UNCERTAIN"  # > 180 V
    assert device.meter.readings({"I1": 7.0})["smm/I1"].quality == "GOOD"  # <= 7.5 A
    assert device.meter.readings({"I1": 8.0})["smm/I1"].quality == "UNCERTAIN"
