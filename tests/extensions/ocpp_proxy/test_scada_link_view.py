"""The SCADA link in view, through a real core (docs/OCPP.md, "Upstream outage"): per connector
`scada_up` and `scada_stored` (frames waiting in the outage store), and a health entry
`scada.<id>` that makes the extension degraded, with the reason, while the SCADA is away; a
held call and the close code are logged."""

from __future__ import annotations

import logging

import pytest

from extensions.sdk.testing import point_where, until

from .support import RawScada, charger, recv, scada_answers, site_with_proxy

pytestmark = pytest.mark.timeout(60)

METER = (
    '[2,"m{}","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":"2024-05-01T10:00:00Z",'
    '"sampledValue":[{{"measurand":"Power.Active.Import","unit":"W","value":"7400"}}]}}]}}]'
)


async def test_the_scada_link_as_points_and_health(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="extensions.ocpp_proxy")
    scada = await RawScada(answer=scada_answers).start()
    port = scada.port
    scada2 = None
    try:
        async with site_with_proxy(tmp_path, scada, {"reconnect_max": "0.2s"}) as (proxy, _, site):
            ext = proxy.ext
            async with charger(proxy.server.port) as cp:
                clear = await recv(cp)  # our ClearChargingProfile (nothing in force)
                await cp.send(f'[3,"{str(clear).split(chr(34))[1]}",{{"status":"Accepted"}}]')
                await point_where(site, "ev1/scada_up", lambda p: p.value.bool_value)
                await until(lambda: ext.health()["state"] == "running")

                await scada.ws.close(1001, "maintenance")
                await scada.stop()
                await point_where(site, "ev1/scada_up", lambda p: not p.value.bool_value)
                health = ext.health()
                assert health["state"] == "degraded"
                assert (
                    "scada.CP1: SCADA connection lost (close code 1001 'maintenance')"
                    in (health["last_error"])
                )
                for n in (1, 2):
                    await cp.send(METER.format(n))
                    assert await recv(cp) == f'[3,"m{n}",{{}}]'  # answered by the proxy
                await point_where(site, "ev1/scada_stored", lambda p: p.value.int_value == 2)
                await cp.send('[2,"a1","Authorize",{"idTag":"T"}]')
                await until(lambda: "Authorize a1 held" in caplog.text)

                scada2 = await RawScada(port=port, answer=scada_answers).start()
                assert await recv(cp, timeout=10) == '[3, "a1", {}]'
                await point_where(site, "ev1/scada_up", lambda p: p.value.bool_value)
                await point_where(site, "ev1/scada_stored", lambda p: p.value.int_value == 0)
                await until(lambda: ext.health()["state"] == "running")
            # The charger gone: no SCADA link to miss; the connector says so.
            await point_where(site, "ev1/online", lambda p: not p.value.bool_value)
            await point_where(site, "ev1/scada_up", lambda p: not p.value.bool_value)
            assert ext.links["scada.CP1"].ok
            assert "charge point CP1 disconnected (close code 1000" in caplog.text
    finally:
        await scada.stop()
        if scada2 is not None:
            await scada2.stop()
