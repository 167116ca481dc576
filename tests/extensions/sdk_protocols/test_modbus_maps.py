"""Register maps in the SDK, as any extension uses them: its own directory of shipped maps, its
own rule for point names (none by default), and SunSpec's "not implemented" markers."""

from __future__ import annotations

import struct

import pytest

from extensions.sdk.protocols.modbus_maps import MapError, parse_map, resolve_map, shipped_maps

INVERTER = """
[meter]
name = "Acme inverter"
function = 3
[points]
W = { address = 100, type = "int16", scale_register = 101 }
DCV = { address = 102, type = "uint16", scale = 0.1 }
"""


def _check_inverter_point(name, meter):
    if name not in ("W", "DCV", "Hz"):
        raise ValueError(f"{name!r} is not an inverter point")


def test_an_extension_ships_its_own_maps_and_earlier_dirs_win(tmp_path):
    ours, vendor = tmp_path / "ours", tmp_path / "vendor"
    ours.mkdir()
    vendor.mkdir()
    (ours / "acme.toml").write_text(INVERTER)
    (vendor / "acme.toml").write_text(INVERTER.replace("Acme inverter", "vendor copy"))
    (vendor / "other.toml").write_text(INVERTER.replace("Acme inverter", "Other"))
    assert sorted(shipped_maps([ours, vendor])) == ["acme", "other"]
    assert resolve_map("acme", shipped_dirs=[ours, vendor]).name == "Acme inverter"
    assert resolve_map("other", shipped_dirs=[ours, vendor]).name == "Other"
    with pytest.raises(MapError, match="not a shipped map \\(acme, other\\)"):
        resolve_map("nope", shipped_dirs=[ours, vendor])


def test_point_names_are_the_extensions_business(tmp_path):
    path = tmp_path / "acme.toml"
    path.write_text(INVERTER.replace("DCV =", "Temperature ="))
    assert set(resolve_map(str(path)).points) == {"W", "Temperature"}  # no rule: any name
    with pytest.raises(MapError) as err:
        resolve_map(str(path), check_point=_check_inverter_point)
    assert "acme.toml [points.Temperature]: 'Temperature' is not an inverter point" in str(
        err.value
    )


def test_sunspec_markers_mean_no_value_and_zero_stays_a_value():
    doc = {
        "meter": {"name": "sunspec", "function": 3, "not_implemented": "sunspec"},
        "points": {
            "A": {"address": 0, "type": "int16", "scale_register": 1},
            "B": {"address": 2, "type": "uint16"},
            "C": {"address": 3, "type": "uint32"},
            "D": {"address": 5, "type": "float32"},
            "E": {"address": 7, "type": "int16"},
        },
    }
    m = parse_map(doc, "doc")
    nan = struct.unpack(">HH", struct.pack(">f", float("nan")))
    markers = {0: 1234, 1: 0x8000, 2: 0xFFFF, 3: 0xFFFF, 4: 0xFFFF, 5: nan[0], 6: nan[1], 7: 0}
    assert m.decode(markers) == {"E": 0.0}  # every marker left out, a real 0 kept
    values = {0: 1234, 1: 0xFFFE, 2: 7, 3: 0, 4: 1, 5: 0x4148, 6: 0, 7: 0x8001}
    assert m.decode(values) == {"A": 12.34, "B": 7, "C": 1, "D": 12.5, "E": -32767}
    # Without the sunspec rule the same words are plain numbers.
    plain = parse_map({**doc, "meter": {"name": "plain", "function": 3}}, "doc")
    assert plain.decode(markers)["B"] == 0xFFFF
