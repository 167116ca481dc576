"""The overview's arithmetic and words: signs as DATA-MODEL.md defines them, the house derived,
a stale part making what is derived from it stale."""

from __future__ import annotations

from smx.sdk import PointUpdate
from untrusted.gui.overview import overview, power_words
from untrusted.gui.settings import OverviewConfig


def points(**values: float | tuple[float, str]) -> dict[str, PointUpdate]:
    out = {}
    for key, v in values.items():
        name = key.replace("__", "/")
        value, quality = v if isinstance(v, tuple) else (v, "GOOD")
        out[name] = PointUpdate(name, value, "W", quality, 1000.0, 1)
    return out


def parts(latest: dict[str, PointUpdate]) -> dict[str, dict]:
    return {p.key: p.as_json() for p in overview(OverviewConfig(), latest)}


def test_the_signs_are_said_in_words():
    assert power_words("grid", -1200.0) == "exporting 1.2 kW to the grid"
    assert power_words("grid", 850.0) == "importing 850 W from the grid"
    assert power_words("battery", 3000.0) == "charging 3.0 kW"
    assert power_words("battery", -2500.0) == "discharging 2.5 kW"
    assert power_words("pv", -4200.0) == "producing 4.2 kW"
    assert power_words("ev", 0.0) == "not charging"
    assert power_words("grid", None) == "no value"


def test_the_house_is_the_grid_less_battery_ev_and_pv():
    # Exporting 1 kW while PV makes 5 kW and the battery takes 2 kW and an EV 1 kW:
    # the house uses 5 - 2 - 1 - 1 = 1 kW.
    got = parts(points(smm__P=-1000.0, pv__P=-5000.0, ess__P=2000.0, ev1__P=1000.0))
    assert got["house"]["watts"] == 1000.0
    assert got["house"]["words"] == "using 1.0 kW"
    assert got["house"]["quality"] == "DERIVED"
    assert got["grid"]["words"] == "exporting 1.0 kW to the grid"


def test_two_chargers_are_one_ev_part():
    got = parts(points(smm__P=0.0, ev1__P=7000.0, ev2__P=3000.0))
    assert got["ev"]["watts"] == 10000.0 and got["ev"]["points"] == ["ev1/P", "ev2/P"]


def test_a_stale_part_makes_the_house_stale_and_absent_parts_say_so():
    got = parts(points(smm__P=500.0, ess__P=(100.0, "STALE")))
    assert got["battery"]["quality"] == "STALE"
    assert got["house"]["quality"] == "STALE"
    assert got["pv"]["quality"] == "ABSENT" and got["pv"]["watts"] is None


def test_without_a_grid_meter_the_house_is_not_guessed():
    got = parts(points(pv__P=-3000.0))
    assert got["house"]["watts"] is None and got["house"]["quality"] == "ABSENT"


def test_the_battery_shows_its_charge_state():
    latest = points(ess__P=0.0)
    latest["ess/SoC"] = PointUpdate("ess/SoC", 64.0, "%", "GOOD", 1000.0, 1)
    got = parts(latest)
    assert got["battery"]["soc"] == 64.0 and got["battery"]["words"] == "idle"
