"""The energy_router config table through the extension's own setup: a mistake is one line
naming the key as written in site.toml; relative ports are the site directory's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extensions.energy_router import setup
from extensions.energy_router.config import ErConfig
from extensions.sdk import Extension, SetupError
from smx.client import Credentials
from smx.process_env import ProcessEnv
from smx.sdk import parse_settings

PORTS = {"inverter_port": "er-inverter.pty", "battery_port": "/dev/ttyACM1"}


def extension(tmp_path: Path, config: dict[str, Any]) -> Extension:
    (tmp_path / "er.json").write_text(json.dumps(config))
    creds = Credentials(tmp_path / "ca.crt", tmp_path / "er.crt", tmp_path / "er.key")
    env = ProcessEnv(
        name="er",
        target=f"unix://{tmp_path / 'core.sock'}",
        credentials=creds,
        home=tmp_path,
        config_file=tmp_path / "er.json",
    )
    return Extension(env)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {**PORTS, "keepalvie": "1s"},
            "extensions.er.config.keepalvie: unknown key (did you mean 'keepalive'?",
        ),
        ({"battery_port": "/dev/ttyACM1"}, "extensions.er.config.inverter_port"),
        (
            {**PORTS, "battery_positive": "charging"},
            'extensions.er.config.battery_positive: "charging" is not a choice',
        ),
        ({**PORTS, "initial_soc": 120}, "extensions.er.config.initial_soc: must be"),
        ({**PORTS, "keepalive": "soon"}, "extensions.er.config.keepalive"),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_key(
    tmp_path: Path, config: dict[str, Any], expected: str
) -> None:
    with pytest.raises(SetupError) as err:
        setup(extension(tmp_path, config))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_and_relative_ports(tmp_path: Path) -> None:
    cfg = parse_settings(ErConfig, PORTS, base_dir=tmp_path)
    assert cfg.inverter_port == tmp_path / "er-inverter.pty"
    assert str(cfg.battery_port) == "/dev/ttyACM1"
    assert (cfg.baudrate, cfg.keepalive, cfg.battery_positive) == (9600, 1.0, "discharge")


def test_setup_declares_the_points_and_setpoints(tmp_path: Path) -> None:
    ext = extension(tmp_path, PORTS)
    setup(ext)
    declared = {name: ext.client.declared(name) for name in ext.client.declared_names()}
    assert declared["er/P_ESS"].unit == "W"
    assert declared["er/SoC"].unit == "%"
    assert declared["er/grid_connected"].kind == "bool"
    assert declared["er/inverter_mode_set"].kind == "int"
    assert sorted(ext.setpoints.handlers) == [
        "er/P_ESS_set",
        "er/P_PV_set",
        "er/P_set",
        "er/Q_set",
        "er/battery_mode_set",
        "er/inverter_mode_set",
        "er/pv_mode_set",
    ]
    assert [d.name for d, _ in ext.devices] == ["er.inverter", "er.battery"]
