"""The smm Modbus simulator (what `smx demo` and the docs' examples read) shows a physically
possible meter, tick after tick: per phase S = U * I, S >= |P|, |Q| <= S, PF = P / S; the totals
are the sums of the phases; the import indexes advance by the energy the power delivered.
Checked on the values the simulator generates for every shipped map, and on what a reader gets
over Modbus TCP (float32 registers) from a live simulated SDM630, the demo's PCC meter."""

from __future__ import annotations

import asyncio
import math

import pytest

from extensions.sdk.testing import free_port
from extensions.smm.config import ModbusMeterConfig as Entry
from extensions.smm.meter_maps import resolve_map, shipped_maps
from extensions.smm.modbus_device import build_meters
from extensions.smm.modbus_simulator import BusSimulator, SimMeter, typical_values

pytestmark = pytest.mark.timeout(60)

TICK = 0.37  # s: not a divisor of any of the simulator's periods
TICKS = 10_000  # about an hour of a meter read every 0.37 s


def check_physics(v: dict[str, float], phases: int, rel: float) -> None:
    """The identities a real meter's readings satisfy, on whichever points the map has."""

    def near(a: float, b: float, what: str) -> None:
        assert math.isclose(a, b, rel_tol=rel, abs_tol=rel * 10), (what, a, b, v)

    apparent = []
    for k in [1, 2, 3] if phases == 3 else [""]:
        u, i, p = v[f"U{k}"], v[f"I{k}"], v[f"P{k}"]
        s = v.get(f"S{k}", u * i)
        near(s, u * i, f"S{k} = U{k} * I{k}")
        assert abs(p) <= s * (1 + rel), (f"|P{k}| <= S{k}", p, s)
        if f"Q{k}" in v:
            q = v[f"Q{k}"]
            assert abs(q) <= s * (1 + rel), (f"|Q{k}| <= S{k}", q, s)
            near(s * s, p * p + q * q, f"S{k}^2 = P{k}^2 + Q{k}^2")
        near(v[f"PF{k}"], p / s, f"PF{k} = P{k} / S{k}")
        assert -1 <= v[f"PF{k}"] <= 1
        apparent.append(s)
    if phases == 3:
        for x in ("P", "Q", "S"):
            if x in v and f"{x}1" in v:
                near(v[x], v[f"{x}1"] + v[f"{x}2"] + v[f"{x}3"], f"{x} = {x}1 + {x}2 + {x}3")
    s_total = v.get("S", sum(apparent))
    assert abs(v["P"]) <= s_total * (1 + rel), ("|P| <= S", v)
    if "Q" in v:
        assert abs(v["Q"]) <= s_total * (1 + rel), ("|Q| <= S", v)
    near(v["PF"], v["P"] / s_total, "PF = P / S")
    voltages = [v[k] for k in v if k.startswith("U")]
    assert 207 <= min(voltages) <= max(voltages) <= 253  # EN 50160: 230 V +-10 %
    assert 49.8 <= v["f"] <= 50.2


@pytest.mark.parametrize("name", sorted(shipped_maps()))
def test_every_tick_of_every_shipped_map_is_physically_possible(name):
    m = resolve_map(name)
    previous = typical_values(m, 0.0)
    delivered_wh = reactive_varh = 0.0
    for n in range(1, TICKS + 1):
        v = typical_values(m, n * TICK)
        assert set(v) == set(m.points)  # every point of the map has a value
        check_physics(v, m.phases, rel=1e-9)
        assert v["P"] > 0  # a house that imports: the export indexes stand still
        # Trapezoids of P (and Q) over the tick: what the import indexes must have gained.
        delivered_wh += (previous["P"] + v["P"]) / 2 * TICK / 3600
        if "Q" in v:
            reactive_varh += (previous["Q"] + v["Q"]) / 2 * TICK / 3600
        assert v["Ap"] >= previous["Ap"]
        assert v["Am"] == previous["Am"]
        previous = v
    start = typical_values(m, 0.0)
    assert (previous["Ap"] - start["Ap"]) * 1000 == pytest.approx(delivered_wh, rel=1e-4)
    if "Rp" in previous and "Q" in previous:
        assert (previous["Rp"] - start["Rp"]) * 1000 == pytest.approx(reactive_varh, rel=1e-4)
    # An hour of a ~2.3 kW house (~1 kW on one phase) shows on the index.
    hour_kwh = previous["Ap"] - start["Ap"]
    assert (1.8 < hour_kwh < 2.8) if m.phases == 3 else (0.7 < hour_kwh < 1.3), hour_kwh


async def test_the_demo_meter_read_over_modbus_is_physically_possible():
    sim = BusSimulator([SimMeter(1, resolve_map("eastron_sdm630"), live=True)])
    port = free_port()
    await sim.start_tcp("127.0.0.1", port)
    (meter,) = build_meters(
        [Entry(device="smm", map="eastron_sdm630", unit=1, host="127.0.0.1", port=port)]
    )
    try:
        seen = []
        for _ in range(12):
            readings = await meter.poll()
            v = {name.split("/", 1)[1]: float(r.value) for name, r in readings.items()}
            check_physics(v, 3, rel=1e-5)  # float32 registers: ~7 significant digits
            seen.append(v)
            await asyncio.sleep(0.15)
        assert len({v["P"] for v in seen}) > 1  # live: the load swings
        assert all(b["Ap"] >= a["Ap"] for a, b in zip(seen, seen[1:], strict=False))
        assert math.isclose(seen[0]["P"], 2300, rel_tol=0.2)
    finally:
        await meter.close()
        await sim.stop()
