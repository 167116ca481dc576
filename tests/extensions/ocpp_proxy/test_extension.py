"""The extension against a real core: observed points with their units and the charger's
timestamps, and a setpoint end to end (APPLIED, the EV charges at the limit, expiry clears
the profile), UNCONFIRMED then APPLIED when the charger answers late."""

from __future__ import annotations

import asyncio

import pytest

from extensions.ocpp_proxy.sim_charger import Ev, SimCharger
from extensions.ocpp_proxy.sim_csms import SimCsms
from extensions.sdk.testing import point_where, until
from smx.v1 import point_pb2 as ppb

from .support import site_with_proxy

pytestmark = pytest.mark.timeout(60)


async def test_points_and_a_setpoint_end_to_end_through_a_real_core(tmp_path):
    csms = await SimCsms().start()
    try:
        async with site_with_proxy(tmp_path, csms) as (proxy, _, site):
            sim = SimCharger(
                f"ws://127.0.0.1:{proxy.server.port}/CP1", ev=Ev(max_current=16), interval=0.1
            )
            sim_task = asyncio.create_task(sim.run())
            try:
                p = await point_where(site, "ev1/P", lambda p: p.value.double_value > 11000)
                assert p.unit == "W" and p.quality == ppb.QUALITY_GOOD
                await point_where(site, "ev1/tx_active", lambda p: p.value.bool_value)
                await point_where(site, "ev1/status", lambda p: p.value.string_value == "Charging")
                ap = await point_where(site, "ev1/Ap", lambda p: p.value.double_value > 1000)
                assert ap.unit == "kWh"

                async with site.client("ctrl") as ctrl:
                    sp = await until(lambda: ctrl.request_setpoint("ev1/I_max_set", 10.0, 3))
                    done = await ctrl.outcome(sp.id, timeout=10)
                    assert (done.status, done.applied_value) == ("APPLIED", 10.0)
                    # The EV follows the profile: 10 A on 3 phases at 230 V.
                    await point_where(site, "ev1/P", lambda p: p.value.double_value == 6900.0)
                    await point_where(site, "ev1/I1", lambda p: p.value.double_value == 10.0)
                    assert list(sim.profiles.by_id) == [917001]
                    # Expiry: our profile cleared, the EV back at its own 16 A.
                    await point_where(site, "ev1/I1", lambda p: p.value.double_value == 16.0)
                    assert sim.profiles.by_id == {}

                    # A charger that answers late: UNCONFIRMED, then the real outcome.
                    sim.cp.answer_delay = 1.5
                    seen = []
                    ctrl.on_outcome(
                        lambda state: seen.append((state.id, state.status, state.reason))
                    )
                    sp = await ctrl.request_setpoint("ev1/P_max_set", 4600.0, 30)
                    later = await ctrl.outcome(sp.id, timeout=10)  # skips UNCONFIRMED
                    assert (later.status, later.applied_value) == ("APPLIED", 4600.0)
                    mine = [(status, reason) for id, status, reason in seen if id == sp.id]
                    assert [status for status, _ in mine][-2:] == ["UNCONFIRMED", "APPLIED"]
                    assert mine[-2][1] == "charge point CP1 has not answered within 1 s"
                    await point_where(site, "ev1/P", lambda p: p.value.double_value == 4600.0)
                # No SetChargingProfile ever reached the SCADA.
                assert not any("SetChargingProfile" in f for f in csms.frames["CP1"])
                assert not any("ChargingProfile" in f for f in csms.sent["CP1"])
            finally:
                sim_task.cancel()
    finally:
        await csms.stop()
