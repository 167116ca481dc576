"""What the fronius extension makes of each recorded Solar API response in fixtures/<model>/,
and the snapshot of it in that folder's `expected.toml`.

`python -m tests.extensions.fronius.recordings` writes the snapshots; they were then checked by
hand against the responses (signs: docs/FRONIUS.md). Rewrite one only after checking the
change the same way.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from extensions.fronius import solar_points
from extensions.fronius.solar_api import SolarApiError, parse_api_version, parse_response
from extensions.fronius.values import Values
from smx.toml_text import toml_str
from smx.vocabulary import lookup

FIXTURES = Path(__file__).parent / "fixtures"
_INFO = ("GetLoggerInfo", "GetInverterInfo")
SOLAR_API = sorted(d for d in FIXTURES.iterdir() if any(d.glob("Get*.json")))


def mapped(path: Path) -> dict[str, Any]:
    """{"device": ..., "points": {name: {value, unit, quality}}} or {"error": ...}."""
    raw = path.read_bytes()
    name = path.name
    try:
        if name.startswith("GetAPIVersion"):
            return {"base_url": parse_api_version(raw)}
        data = parse_response(raw, name.split("_")[0].removesuffix(".json"))
    except SolarApiError as err:
        if name.startswith(_INFO) and json.loads(raw)["Head"]["Status"]["Code"] == 0:
            return {"read": "not used for points"}  # GetLoggerInfo has Body.LoggerInfo
        return {"error": f"{type(err).__name__}: {err}"}
    device = "fronius"
    values: Values
    if name.startswith("GetPowerFlow"):
        values = solar_points.power_flow(data, "1")
    elif name.startswith("GetInverterRealtimeData"):
        collection = json.loads(raw)["Head"]["RequestArguments"]["DataCollection"]
        if collection == "3PInverterData":
            values = solar_points.inverter_3p(data)
        else:
            values = solar_points.inverter_common(data)
    elif name.startswith("GetMeterRealtimeData"):
        device, values = "fronius_meter", solar_points.meter(data)
    elif name.startswith("GetStorageRealtimeData"):
        values = solar_points.storage(data)
    else:
        return {"read": "not used for points"}
    return {"device": device, "points": {k: _point(k, v) for k, v in sorted(values.items())}}


def _point(name: str, value: float | str | None) -> dict[str, Any]:
    term = lookup(name)
    out: dict[str, Any] = {"unit": term.unit if term else ""}
    if value is None:
        out["quality"] = "BAD"
    else:
        out |= {"value": value, "quality": "GOOD"}
    return out


def expected(folder: Path) -> dict[str, Any]:
    with open(folder / "expected.toml", "rb") as f:
        return tomllib.load(f)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return toml_str(value)
    return repr(float(value))


def snapshot_text(folder: Path) -> str:
    lines = [
        "# What the fronius extension makes of each recorded response (test_recordings.py):",
        "# point values in the vocabulary's units and load-reference signs, with their quality",
        "# (BAD without a value: the device reported null). Checked by hand against the files.",
    ]
    for path in sorted(folder.glob("Get*.json")):
        result = mapped(path)
        lines += ["", f"[{toml_str(path.name)}]"]
        for key in ("device", "error", "base_url", "read"):
            if key in result:
                lines.append(f"{key} = {toml_str(result[key])}")
        for point, fields in result.get("points", {}).items():
            inner = ", ".join(f"{k} = {_literal(v)}" for k, v in fields.items())
            lines.append(f"{point} = {{ {inner} }}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for folder in SOLAR_API:
        (folder / "expected.toml").write_text(snapshot_text(folder))
        print(f"wrote {folder / 'expected.toml'}")
