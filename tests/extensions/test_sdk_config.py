"""The one typed config helper (smx.sdk.config) that every extension and agent uses: a dataclass
schema, errors that name the key as written in site.toml and suggest the nearest one, unknown
keys refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from extensions.remote_usm import RemoteConfig
from extensions.smm.__main__ import SmmConfig
from smx.sdk import Seconds, SetupError, parse_settings, setting
from untrusted.planner import PlannerConfig

WHERE = "extensions.ev1.config"


@dataclass(frozen=True)
class Charger:
    id: str
    max_current: float = setting(16.0, min=6, max=80)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int = setting(502, min=1, max=65535)
    interval: Seconds = setting(1.0, min=0.1, max=60)
    mode: Literal["eco", "fast"] = "eco"
    verbose: bool = False
    tls_key: Path | None = None
    phases: list[int] = field(default_factory=lambda: [1, 2, 3])
    chargers: list[Charger] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    label: str = setting("", check=lambda s: "no spaces, please" if " " in s else None)


def parse(table: dict[str, Any]) -> Settings:
    return parse_settings(Settings, table, where=WHERE, base_dir=Path("/site"))


def test_a_complete_table_is_converted():
    s = parse(
        {
            "host": "10.0.0.9",
            "port": 1502,
            "interval": "500ms",
            "mode": "fast",
            "verbose": True,
            "tls_key": "keys/ev.key",
            "phases": [1],
            "chargers": [{"id": "left"}, {"id": "right", "max_current": 32}],
            "extra": {"anything": ["goes"]},
        }
    )
    assert (s.host, s.port, s.interval, s.mode, s.verbose) == ("10.0.0.9", 1502, 0.5, "fast", True)
    assert s.tls_key == Path("/site/keys/ev.key")  # relative to the site directory
    assert s.chargers == [Charger("left"), Charger("right", 32.0)] and s.phases == [1]
    assert parse({"host": "h"}) == Settings(host="h")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, f"{WHERE}.host: missing (required)"),
        (
            {"host": "h", "intervall": 2},
            f"{WHERE}.intervall: unknown key (did you mean 'interval'?",
        ),
        ({"host": 5}, f"{WHERE}.host: expected a string, got 5"),
        ({"host": "h", "port": 0}, f"{WHERE}.port: must be between 1 and 65535, got 0"),
        ({"host": "h", "port": "502"}, f'{WHERE}.port: expected an integer, got "502"'),
        ({"host": "h", "interval": "2 weeks"}, f'{WHERE}.interval: expected a duration like "30d"'),
        ({"host": "h", "interval": 120}, f"{WHERE}.interval: must be between 100ms and 1m"),
        (
            {"host": "h", "mode": "fats"},
            f"{WHERE}.mode: \"fats\" is not a choice (did you mean 'fast'?",
        ),
        ({"host": "h", "verbose": "yes"}, f'{WHERE}.verbose: expected true or false, got "yes"'),
        ({"host": "h", "phases": [1, "2"]}, f'{WHERE}.phases[1]: expected an integer, got "2"'),
        (
            {"host": "h", "chargers": [{"id": "a", "max_curent": 10}]},
            f"{WHERE}.chargers[0].max_curent: unknown key (did you mean 'max_current'?",
        ),
        ({"host": "h", "chargers": [{}]}, f"{WHERE}.chargers[0].id: missing (required)"),
        ({"host": "h", "extra": [1]}, f"{WHERE}.extra: expected a table, got an array"),
        ({"host": "h", "label": "a b"}, f"{WHERE}.label: no spaces, please"),
    ],
)
def test_errors_name_the_key_and_suggest_the_nearest(table, message):
    with pytest.raises(SetupError) as err:
        parse(table)
    assert str(err.value).startswith(message), str(err.value)


def test_the_shipped_processes_use_it():
    with pytest.raises(SetupError, match=r"agents\.planner\.config\.evry: unknown key .*'every'"):
        parse_settings(PlannerConfig, {"evry": 5}, where="agents.planner.config")
    with pytest.raises(SetupError, match="plan: must list at least one value"):
        parse_settings(PlannerConfig, {"plan": []}, where="agents.planner.config")
    assert parse_settings(PlannerConfig, {"every": "1m"}).every == 60.0
    with pytest.raises(SetupError, match="usm1.config.remote: missing"):
        parse_settings(RemoteConfig, {}, where="extensions.usm1.config")
    with pytest.raises(SetupError, match=r"smm\.config\.pollling: unknown key .allowed: modbus"):
        parse_settings(SmmConfig, {"pollling": "fast"}, where="extensions.smm.config")
