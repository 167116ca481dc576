"""Register maps as data: every shipped map loads and reads in few requests; encode/decode are
inverse (word/byte orders, scales, SunSpec scale factors, signs); bad maps are refused with a
message naming the file and the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extensions.sdk.protocols.modbus_maps import MapError, load_map, parse_map
from extensions.smm.meter_maps import check_point, resolve_map, shipped_maps

SHIPPED = [
    "eastron_sdm630",
    "eastron_sdm120",
    "carlogavazzi_em24",
    "carlogavazzi_em340",
    "fronius_smart_meter_203",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_map_loads_names_its_source_and_reads_in_few_requests(name):
    m = resolve_map(name)
    assert m.source and m.name
    assert 1 <= len(m.blocks) <= 3
    assert all(b.count <= m.max_registers for b in m.blocks)
    covered = {a for b in m.blocks for a in range(b.start, b.end)}
    for p in m.points.values():
        assert set(range(p.address, p.address + p.count)) <= covered
    assert {"P", "Ap", "Am"} <= set(m.points)


def test_all_shipped_maps_are_listed():
    assert sorted(shipped_maps()) == sorted(SHIPPED)


def test_sdm630_is_one_request_and_decodes_float_abcd():
    m = resolve_map("eastron_sdm630")
    assert [(b.start, b.count) for b in m.blocks] == [(0, 80)]
    regs = {a: 0 for a in range(80)}
    regs[0x34], regs[0x35] = 0xC51C, 0x4000  # -2500.0 (export)
    assert m.decode(regs)["P"] == -2500.0


def test_em24_word_swapped_int32_with_divisor():
    m = resolve_map("carlogavazzi_em24")
    regs = {a: 0 for b in m.blocks for a in range(b.start, b.end)}
    # 2301 (230.1 V) as INT32, low word first.
    regs[0], regs[1] = 2301, 0
    # -12345 (-1234.5 W) as INT32 LSW first: 0xFFFFCFC7 -> words CFC7, FFFF.
    regs[0x28], regs[0x29] = 0xCFC7, 0xFFFF
    regs[0x37] = 500  # 50.0 Hz
    got = m.decode(regs)
    assert got["U1"] == pytest.approx(230.1)
    assert got["P"] == pytest.approx(-1234.5)
    assert got["f"] == pytest.approx(50.0)


def test_sunspec_scale_factor_and_not_implemented():
    m = resolve_map("fronius_smart_meter_203")
    regs = {a: 0 for b in m.blocks for a in range(b.start, b.end)}
    regs[40087], regs[40091] = (-1234) & 0xFFFF, (-1) & 0xFFFF  # W = -123.4, W_SF = -1
    regs[40115], regs[40116], regs[40123] = 0x0001, 0xE240, 0  # TotWhImp 123456 Wh
    regs[40077] = 0x8000  # PhVphA not implemented
    got = m.decode(regs)
    assert got["P"] == pytest.approx(-123.4)
    assert got["Ap"] == pytest.approx(123.456)
    assert "U1" not in got


@given(
    name=st.sampled_from(SHIPPED),
    p=st.floats(-20000, 20000, allow_nan=False).map(lambda v: round(v, 1)),
    u=st.floats(180, 260).map(lambda v: round(v, 1)),
    ap=st.floats(0, 999999).map(lambda v: round(v, 1)),
)
def test_encode_then_decode_gives_back_the_values(name, p, u, ap):
    m = resolve_map(name)
    values = {"P": p, "Ap": ap}
    values["U1" if "U1" in m.points else "U"] = u
    sfs = {a: -1 for a in m.scale_registers}
    if "Ap" in m.points and m.points["Ap"].scale_register is not None:
        sfs[m.points["Ap"].scale_register] = 2  # Wh with SF 2: 100 Wh steps
        values["Ap"] = round(ap, 1)
    if name == "fronius_smart_meter_203":
        values["P"] = round(max(-3000.0, min(3000.0, p)), 1)  # int16 * 0.1
    regs = {a: 0 for b in m.blocks for a in range(b.start, b.end)}
    regs.update(m.encode(values, sfs))
    got = m.decode(regs)
    for k, v in values.items():
        tol = 0.1 if k == "Ap" and name == "fronius_smart_meter_203" else 1e-6 * max(1, abs(v))
        if m.points[k].type == "float32":
            tol = max(tol, abs(v) * 1e-6 + 0.05)
        assert math.isclose(got[k], v, abs_tol=tol), (k, v, got[k])


def test_sign_minus_one_turns_generator_reference_into_load_reference(tmp_path):
    path = tmp_path / "pv_meter.toml"
    path.write_text(
        '[meter]\nname = "gen ref"\n[points]\nP = { address = 0, type = "int16", sign = -1 }\n'
    )
    m = load_map(path, check_point=check_point)
    assert m.decode({0: 1500})["P"] == -1500.0
    assert m.encode({"P": -1500.0}) == {0: 1500}


def test_user_map_by_path_relative_to_config_dir(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "mine.toml").write_text(
        '[meter]\nname = "Mine"\nfunction = 3\nword_order = "little"\n'
        '[points]\nP = { address = 100, type = "int32", scale = 0.01 }\n'
        'Ap = { address = 200, type = "uint64", scale = 0.001 }\n'
    )
    m = resolve_map("maps/mine.toml", base_dir=tmp_path)
    assert m.name == "Mine" and m.function == 3
    assert [(b.start, b.count) for b in m.blocks] == [(100, 2), (200, 4)]


BAD = [
    ('[meter]\nname="x"\nbaud=9600\n[points]\nP={address=0,type="int16"}\n', "baud"),
    ('[meter]\nname="x"\n[points]\nP={address=0,type="int16",scal=2}\n', "scal"),
    ('[meter]\nname="x"\n[points]\nPower={address=0,type="int16"}\n', "Power"),
    ('[meter]\nname="x"\n[points]\nP={address=0,type="float16"}\n', "float16"),
    ('[meter]\nname="x"\n[points]\nP={address=70000,type="int16"}\n', "address"),
    ('[meter]\nname="x"\n[points]\nP={type="int16"}\n', "address"),
    ('[meter]\nname="x"\n[points]\nP={address=0,type="int16",sign=2}\n', "sign"),
    ('[meter]\nname="x"\nfunction=2\n[points]\nP={address=0,type="int16"}\n', "function"),
    (
        '[meter]\nname="x"\nword_order="middle"\n[points]\nP={address=0,type="int16"}\n',
        "word_order",
    ),
    (
        '[meter]\nname="x"\nmax_registers=200\n[points]\nP={address=0,type="int16"}\n',
        "max_registers",
    ),
    (
        '[meter]\nname="x"\n[points]\nP={address=0,type="int32"}\nQ={address=1,type="int16"}\n',
        "share",
    ),
    ('[meter]\nname="x"\nphases=1\n[points]\nP2={address=0,type="int16"}\n', "single-phase"),
    ('[meter]\n[points]\nP={address=0,type="int16"}\n', "name"),
    ('[meter]\nname="x"\n', "points"),
    ('[meter]\nname="x"\n[register]\n', "register"),
    ('[meter\nname="x"\n', "TOML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD)
def test_bad_map_is_refused_naming_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad_meter.toml"
    path.write_text(text)
    with pytest.raises(MapError) as err:
        load_map(path, check_point=check_point)
    assert "bad_meter.toml" in str(err.value) and needle in str(err.value)


def test_unknown_map_name_lists_the_shipped_ones():
    with pytest.raises(MapError, match="eastron_sdm630"):
        resolve_map("eastron_sdm999")


def test_missing_map_file_is_a_clear_error(tmp_path):
    with pytest.raises(MapError, match="cannot read register map"):
        resolve_map(str(tmp_path / "nope.toml"))


def test_parse_map_accepts_a_document():
    m = parse_map(
        {"meter": {"name": "doc"}, "points": {"f": {"address": 5, "type": "uint16"}}}, "x"
    )
    assert m.decode({5: 5000}) == {"f": 5000.0}


def test_maps_dir_exists():
    assert Path(next(iter(shipped_maps().values()))).parent.name == "maps"
