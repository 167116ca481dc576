"""Meter semantics: primary values through VT/CT, and the declared recirculation point in the
same (primary) units as the published index."""

from __future__ import annotations

import pytest

from extensions.smm.semantics import Meter, Ratings, Ratios


def test_ratios_scale_what_the_transformers_scale():
    m = Meter("smm", Ratios(ct=100.0, vt=10.0))
    got = {
        k: r.value
        for k, r in m.readings(
            {"U1": 23.0, "I1": 1.5, "P": 300.0, "f": 50.0, "PF": 0.9, "Ap": 12.5}
        ).items()
    }
    assert got == {
        "smm/U1": 230.0,
        "smm/I1": 150.0,
        "smm/P": 300_000.0,
        "smm/f": 50.0,
        "smm/PF": 0.9,
        "smm/Ap": 12_500.0,
    }


def test_index_max_is_declared_in_the_units_the_index_is_published_in():
    m = Meter("smm", Ratios(ct=100.0), index_max=999_999.99)
    assert m.spec("Ap").index_max == pytest.approx(99_999_999.0)
    assert m.readings({"Ap": 500_000.0})["smm/Ap"].quality == "GOOD"  # 5e7 < 1e8
    assert m.readings({"Ap": 1_000_001.0})["smm/Ap"].quality == "UNCERTAIN"
    assert m.spec("P").index_max == 0.0


def test_implausible_values_are_uncertain_and_billing_points_never_go_stale():
    m = Meter("smm")
    assert m.readings({"f": 5000.0})["smm/f"].quality == "UNCERTAIN"  # a decoding error
    assert m.readings({"f": 50.01})["smm/f"].quality == "GOOD"
    assert m.spec("Ap.bill01").period is None and m.spec("Ap").period is not None
    with pytest.raises(ValueError):
        m.spec("Volts")


def test_plausibility_limits_follow_the_meters_ratings():
    """1.5 x the nameplate on U and I, their product per phase on powers, 3x for totals: a
    decoding error (77 MW from a broken map) is UNCERTAIN, an unusual but real value is not."""
    direct = Meter("smm")  # 230 V, 100 A
    q = {
        k.partition("/")[2]: r.quality
        for k, r in direct.readings(
            {"P": 77e6, "P1": 30_000.0, "U1": 253.0, "I1": 140.0, "Q": -100_000.0}
        ).items()
    }
    assert q == {"P": "UNCERTAIN", "P1": "GOOD", "U1": "GOOD", "I1": "GOOD", "Q": "GOOD"}
    assert direct.readings({"U1": 400.0})["smm/U1"].quality == "UNCERTAIN"  # > 345 V
    assert direct.readings({"I2": -151.0})["smm/I2"].quality == "UNCERTAIN"
    assert direct.readings({"P2": 52_000.0})["smm/P2"].quality == "UNCERTAIN"  # > 51.75 kW

    # A CT meter rated 6 A on its terminals: the limits apply before the ratio.
    ct = Meter("smm", Ratios(ct=200.0), ratings=Ratings(u_nominal=230.0, i_max=6.0))
    assert ct.readings({"I1": 5.0})["smm/I1"].value == 1000.0
    assert ct.readings({"I1": 5.0})["smm/I1"].quality == "GOOD"
    assert ct.readings({"I1": 10.0})["smm/I1"].quality == "UNCERTAIN"
    assert ct.readings({"P": 5_000.0})["smm/P"].quality == "GOOD"  # 1 MW primary
    assert ct.readings({"P": 10_000.0})["smm/P"].quality == "UNCERTAIN"


def test_a_current_without_phase_is_limited_as_a_total():
    m = Meter("smm")  # 100 A: 150 A per phase, 450 A for the sum of three
    assert m.readings({"I": 400.0})["smm/I"].quality == "GOOD"
    assert m.readings({"I": 460.0})["smm/I"].quality == "UNCERTAIN"
    assert m.readings({"I1": 160.0})["smm/I1"].quality == "UNCERTAIN"
