"""The point vocabulary (smx/vocabulary.toml, docs/DATA-MODEL.md): every name the meter code
publishes resolves with the unit the meter code uses, the suffix forms resolve, free names pass,
a wrong unit is named in one line, and the page and the data file agree."""

from __future__ import annotations

import fnmatch
import itertools
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.battery.__main__ import points as battery_points
from extensions.smm import semantics
from extensions.smm.iec62056_21 import DataSet, DataValue, parse_data_message
from extensions.smm.obis import map_datasets
from smx.vocabulary import NotInVocabulary, Term, check_declaration, lookup, terms, unit_of

ROOT = Path(__file__).resolve().parents[2]
MAPS = sorted((ROOT / "extensions/smm/maps").glob("*.toml"))
IEC_FIXTURES = ROOT / "tests/extensions/smm/fixtures"


# The units a meter's points must carry (docs/DATA-MODEL.md), written out here so that a change
# of the vocabulary file is caught, not followed.
METER_UNITS = {"U": "V", "I": "A", "P": "W", "Q": "var", "S": "VA", "PF": "1", "f": "Hz"}
METER_UNITS |= {"Ap": "kWh", "Am": "kWh", "Rp": "kvarh", "Rm": "kvarh"}


def _meter_names(names: set[str]) -> None:
    """Each name resolves, with the unit a meter's point must have, as the meter declares it."""
    assert names
    for name in sorted(names):
        term = lookup(name)
        assert term is not None, f"{name} is published by the meter code but not in the vocabulary"
        assert term.unit == METER_UNITS[term.base] == semantics.unit_of(name), name
        spec = semantics.Meter("smm").spec(name)
        assert check_declaration(spec.name, spec.unit, spec.kind) is None


# --------------------------------------------------------------------------- the meter code


@pytest.mark.parametrize("path", MAPS, ids=[p.stem for p in MAPS])
def test_every_point_of_the_shipped_register_maps_is_a_vocabulary_name(path):
    _meter_names(set(tomllib.loads(path.read_text())["points"]))


@pytest.mark.parametrize("fixture", ["iskra_mt174", "itron_em214"])
def test_every_name_of_the_recorded_iec_readouts_is_a_vocabulary_name(fixture):
    raw = (IEC_FIXTURES / fixture / "readout.txt").read_bytes()
    datasets = parse_data_message(raw[raw.index(b"\x02") :], require_bcc=False)
    names = set(map_datasets(datasets).readings)
    assert "Ap_T1" in names
    _meter_names(names)


def test_every_obis_register_the_meter_code_maps_is_a_vocabulary_name():
    # Instantaneous values, import/export power pairs, net power, energies per tariff 0..9 and
    # billing snapshots of them: everything obis.py knows, run through the real mapping.
    codes = ["12.7.0", "11.7.0", "14.7.0", "13.7.0"]
    codes += [f"{c}.7.0" for c in (32, 52, 72, 31, 51, 71, 33, 53, 73)]
    codes += [f"{c}.7.0" for c in (1, 2, 21, 22, 41, 42, 61, 62, 3, 4, 23, 24, 43, 44, 63, 64)]
    codes += [f"{c}.8.{t}" for c in (1, 2, 3, 4) for t in range(10)]
    codes += [f"{c}.8.{t}*{f:02d}" for c in (1, 2, 3, 4) for t in (0, 1, 9) for f in (0, 1, 95)]
    datasets = [DataSet(code, (DataValue("1.5"),)) for code in codes]
    datasets += [DataSet(f"0.1.2*{f:02d}", (DataValue("2401010000"),)) for f in (0, 1, 95)]
    net = [DataSet(code, (DataValue("1.5"),)) for code in ("16.7.0", "36.7.0")]
    names = set(map_datasets(datasets).readings) | set(map_datasets(net).readings)
    assert {"U1", "PF3", "Q2", "Rm_T9", "Ap.bill00", "Am_T9.bill95", "P1"} <= names
    assert not map_datasets(datasets).unmapped
    _meter_names(names)


def test_the_meter_grammar_and_the_vocabulary_accept_the_same_meter_names():
    bases = ["U", "I", "P", "Q", "S", "PF", "f", "Ap", "Am", "Rp", "Rm"]
    phases = ["", "0", "1", "2", "3", "4"]
    tariffs = ["", "_T0", "_T1", "_T4", "_T9", "_T10", "_T01"]
    billing = ["", ".bill00", ".bill01", ".bill99", ".bill1", ".bill100"]
    for parts in itertools.product(bases, phases, tariffs, billing):
        name = "".join(parts)
        try:
            meter_unit: str | None = semantics.unit_of(name)
        except ValueError:
            meter_unit = None
        term = lookup(name)
        assert (term.unit if term else None) == meter_unit, name


def test_the_example_battery_declares_vocabulary_units():
    for spec in battery_points("ess"):
        assert check_declaration(spec.name, spec.unit, spec.kind) is None, spec.name


# --------------------------------------------------------------------------- forms


def test_phase_tariff_billing_and_setpoint_forms():
    assert lookup("U2") == Term("U2", "U", "V", "double", "RMS voltage, phase 2", False)
    assert lookup("S3").unit == "VA" and lookup("PF1").unit == "1"
    tariff = lookup("Ap_T2")
    assert (tariff.base, tariff.unit, tariff.setpoint) == ("Ap", "kWh", False)
    assert "tariff 2" in tariff.description
    assert lookup("Rm_T4").unit == "kvarh"
    snapshot = lookup("Ap_T1.bill07")
    assert (snapshot.name, snapshot.base, snapshot.unit) == ("Ap_T1.bill07", "Ap", "kWh")
    assert "tariff 1" in snapshot.description and "billing" in snapshot.description
    setpoint = lookup("P_ESS_set")
    assert (setpoint.name, setpoint.base, setpoint.unit, setpoint.setpoint) == (
        "P_ESS_set",
        "P_ESS",
        "W",
        True,
    )
    assert lookup("ESS_state").kind == "string" and lookup("ESS_state").unit == ""
    assert lookup("ev1/I_max_set").base == "I_max"  # a full name is accepted too


@pytest.mark.parametrize(
    "name",
    ["U4", "U0", "f1", "P_T1", "Ap1", "Ap_T0", "Ap_T10", "Ap.bill1", "Ap.bill03_set", "Ap_set"]
    + ["ESS_state_set", "p", "F", "SoC1", "Ap_T2_set", "P_ESS1", "U_set", "S_set", "_set", ""],
)
def test_names_outside_the_vocabulary_are_free(name):
    assert lookup(name) is None
    assert check_declaration(f"dev/{name}", "anything", "int") is None
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        unit_of(name)


def test_a_free_name_raises_not_in_vocabulary_a_value_error():
    with pytest.raises(NotInVocabulary, match="not a vocabulary point name"):
        unit_of("temperature")
    assert issubclass(NotInVocabulary, ValueError)


def test_a_wrong_unit_or_kind_is_named_in_one_line():
    assert check_declaration("smm/P", "kW") == (
        "smm/P declared with unit 'kW' but the vocabulary says 'W' (docs/DATA-MODEL.md)"
    )
    message = check_declaration("usm1/smm/Ap_T1.bill02", "Wh", "double")
    assert message is not None and "\n" not in message
    assert "usm1/smm/Ap_T1.bill02" in message and "'Wh'" in message and "'kWh'" in message
    assert check_declaration("ess/SoC", "%", "string") == (
        "ess/SoC declared as kind 'string' but the vocabulary says 'double' (docs/DATA-MODEL.md)"
    )
    assert check_declaration("fronius/P_ESS_set", "W", "double") is None
    assert check_declaration("smm/PF", "1") is None
    assert check_declaration("smm/PF", "") is not None  # dimensionless is "1", not empty


@given(st.text())
def test_lookup_never_raises_on_any_string(text):
    term = lookup(text)
    check_declaration(text, "W", "double")
    if term is not None:
        assert term.name == text.rpartition("/")[2]


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,63}", fullmatch=True))
def test_every_grammatical_point_is_a_vocabulary_name_or_a_free_name(point):
    term = lookup(point)
    if term is None:
        with pytest.raises(NotInVocabulary):
            unit_of(point)
    else:
        assert unit_of(point) == term.unit
        assert check_declaration(f"dev/{point}", term.unit, term.kind) is None


# --------------------------------------------------------------------------- the data file


def _doc_table() -> dict[str, str]:
    """Base name -> unit, from the vocabulary table of docs/DATA-MODEL.md."""
    text = (ROOT / "docs/DATA-MODEL.md").read_text()
    section = text[text.index("## Vocabulary") :]
    section = section[: section.index("\n## ", 1)]
    table: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            for name in re.findall(r"`([^`]+)`", cells[0]):
                table[name] = "" if cells[1] == "(none)" else cells[1]
    return table


def test_the_page_and_the_data_file_list_the_same_names_and_units():
    assert _doc_table() == {t.base: t.unit for t in terms()}


def test_the_data_file_ships_with_the_package_and_is_well_formed():
    assert resources.files("smx").joinpath("vocabulary.toml").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    assert any(fnmatch.fnmatch("vocabulary.toml", p) for p in package_data.get("smx", []))
    assert {t.kind for t in terms()} <= {"double", "int", "bool", "string"}
    assert all(t.description and t.base == t.name and not t.setpoint for t in terms())


def test_importing_the_vocabulary_stays_cheap():
    code = (
        "import sys, smx.vocabulary as v; v.lookup('P');"
        "assert not {'grpc', 'google.protobuf', 'smx.v1'} & set(sys.modules), sys.modules.keys()"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
