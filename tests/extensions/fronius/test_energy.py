"""Ap/Am integrated from P(t): the trapezoidal rule split at zero crossings, gaps left out,
totals kept across restarts."""

from __future__ import annotations

import pytest

from extensions.fronius.energy import EnergyIntegrator, split_trapezoid


def test_trapezoids_split_where_the_power_crosses_zero():
    assert split_trapezoid(1000, 3000, 10) == (20000, 0)
    assert split_trapezoid(-1000, -3000, 10) == (0, 20000)
    # +1000 -> -1000 over 10 s: 5 s drawing (2500 J), 5 s delivering (2500 J).
    assert split_trapezoid(1000, -1000, 10) == pytest.approx((2500, 2500))
    assert split_trapezoid(-3000, 1000, 4) == pytest.approx((500, 4500))


def test_an_hour_at_3_6_kw_is_3_6_kwh_and_survives_a_restart(tmp_path):
    path = tmp_path / "run" / "fronius" / "energy.json"
    energy = EnergyIntegrator(path, save_every=3600)  # saved once at the first interval
    for t in range(0, 3601, 5):
        totals = energy.add(3600.0, float(t), "fronius/Ap", "fronius/Am")
    energy.save()  # as the device does when it stops
    assert totals == {"fronius/Ap": pytest.approx(3.6), "fronius/Am": 0.0}
    assert path.stat().st_mode & 0o777 == 0o600
    again = EnergyIntegrator(path)
    assert again.totals["fronius/Ap"] == pytest.approx(3.6)
    # The first sample after a restart starts a new interval: nothing is invented.
    assert again.add(-1000.0, 10_000.0, "fronius/Ap", "fronius/Am")["fronius/Am"] == 0.0
    assert again.add(-1000.0, 10_036.0, "fronius/Ap", "fronius/Am")["fronius/Am"] == pytest.approx(
        0.01
    )


def test_a_gap_longer_than_max_gap_is_not_integrated(tmp_path):
    energy = EnergyIntegrator(None, max_gap=60)
    energy.add(1000.0, 0.0, "a", "b")
    assert energy.add(1000.0, 61.0, "a", "b")["a"] == 0.0
    assert energy.add(1000.0, 97.0, "a", "b")["a"] == pytest.approx(0.01)


def test_an_unreadable_state_file_starts_from_zero(tmp_path, caplog):
    path = tmp_path / "energy.json"
    path.write_text('{"fronius/Ap": 12.5, "fronius/Am": "x", "bad": -1}')
    assert EnergyIntegrator(path).totals == {"fronius/Ap": 12.5}
    path.write_text("{cut")
    assert EnergyIntegrator(path).totals == {}
    assert "unreadable" in caplog.text
