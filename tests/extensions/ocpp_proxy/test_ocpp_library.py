"""Real `ocpp`-library charge points and CSMS, 1.6 and 2.0.1, through the proxy: boot,
authorise, start, meter values, stop. Every frame arrives byte-identical, both ways, and the
proxy's observation of the session is right."""

from __future__ import annotations

import asyncio

import pytest

from extensions.ocpp_proxy.sim_charger import Ev, SimCharger
from extensions.ocpp_proxy.sim_csms import SimCsms
from extensions.sdk.testing import until

from .support import config, proxy

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_a_charging_session_crosses_unchanged(tmp_path, version):
    csms = await SimCsms().start()
    seen: list[tuple[int, dict]] = []
    try:
        emit = lambda cp, n, r: seen.append((n, r))  # noqa: E731
        async with proxy(config(csms.url), tmp_path, emit=emit) as p:
            sim = SimCharger(
                f"ws://127.0.0.1:{p.port}/CP1",
                version,
                ev=Ev(max_current=10),
                interval=0.05,
                session_s=0.3,
                speed=600,
            )
            task = asyncio.create_task(sim.run(plug_after=0.05))
            await until(lambda: any('"Available"' in f for f in sim.sent[3:]), timeout=10)
            # the last answer on its way: until both sides have everything the other sent
            await until(lambda: len(sim.received) == len(csms.sent["CP1"]) == len(sim.sent))
            task.cancel()
    finally:
        await csms.stop()
    actions = [f.split(",")[2] for f in sim.sent if f.startswith("[2,")]
    tx_action = '"StartTransaction"' if version == "ocpp1.6" else '"TransactionEvent"'
    assert actions[:5] == ['"BootNotification"', '"StatusNotification"', '"StatusNotification"',
                           '"Authorize"', tx_action]  # fmt: skip
    assert csms.frames["CP1"] == sim.sent  # charger -> SCADA, byte for byte
    assert sim.received == csms.sent["CP1"]  # SCADA -> charger, byte for byte
    points = {k: r.value for _, r_ in seen for k, r in r_.items()}
    assert points["status"] == "Available"
    assert points["tx_active"] is False
    powers = [r["P"].value for _, r in seen if "P" in r]
    assert max(powers) == pytest.approx(10 * 230 * 3)  # charging: P > 0
    assert max(r["I1"].value for _, r in seen if "I1" in r) == 10.0
    assert points["U3"] == 230.0
    assert points["E_session"] > 0.1 and points["Ap"] > 1000.0  # kWh
    assert 40 < points["SoC"] < 45
