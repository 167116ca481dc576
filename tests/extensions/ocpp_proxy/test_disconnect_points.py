"""A charger that disconnects: `ev1/online` turns False (GOOD: that is known), the other points
BAD with their last values and their own source times (the MeterValues timestamp), through a
real core (docs/OCPP.md, "Observation into the core")."""

from __future__ import annotations

import datetime as dt

import pytest

from extensions.sdk.testing import point_where
from smx.v1 import point_pb2 as ppb

from .support import RawScada, charger, recv, scada_answers, site_with_proxy

pytestmark = pytest.mark.timeout(60)

METER = (
    '[2,"m1","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2024-05-01T10:00:00Z",'
    '"sampledValue":[{"measurand":"Power.Active.Import","unit":"W","value":"7400"}]}]}]'
)
MEASURED = int(dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC).timestamp())


async def test_a_disconnection_turns_online_false_and_keeps_source_times(tmp_path):
    scada = await RawScada(answer=scada_answers).start()
    try:
        async with site_with_proxy(tmp_path, scada) as (proxy, _, site):
            async with charger(proxy.server.port) as cp:
                await recv(cp)  # our ClearChargingProfile (nothing in force)
                await cp.send(METER)
                assert await recv(cp) == '[3, "m1", {}]'
                await point_where(site, "ev1/P", lambda p: p.value.double_value == 7400.0)
                await point_where(site, "ev1/online", lambda p: p.value.bool_value)
            online = await point_where(site, "ev1/online", lambda p: not p.value.bool_value)
            assert online.quality == ppb.QUALITY_GOOD
            p = await point_where(site, "ev1/P", lambda p: p.quality == ppb.QUALITY_BAD)
            assert p.value.double_value == 7400.0
            assert p.source_time.seconds == MEASURED  # the MeterValues time, not the disconnection
    finally:
        await scada.stop()
