"""A SCADA flood neither fills memory nor starves local control.

Attack: a SCADA (hostile, or looping) sends CALLs faster than the charger answers them (a
busy, slow or hostile charger): each waits up to call_timeout for the charger's one call
slot. Unbounded, the charger-bound queue grows without limit, and the proxy's own
SetChargingProfile (a grid limit) waits behind all of them, n x call_timeout.

Rule: at most `queue_limit` frames wait for the charger; a SCADA CALL beyond that gets a
CALLERROR at once. The proxy's own calls go ahead of the SCADA's waiting calls, still one call
outstanding at the charger at a time.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from extensions.sdk.testing import until

from .support import RawScada, charger, config, proxy, recv

pytestmark = pytest.mark.timeout(30)


async def test_a_scada_flood_is_bounded_and_our_call_goes_first(tmp_path):
    scada = await RawScada().start()
    # f0's call_timeout must outlast the flood's handling below, or f1 is at the charger before
    # our call is queued (under load the 5,000 refusals took over a second).
    cfg = config(scada.url, call_timeout=5, queue_limit=50)
    try:
        async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
            await until(lambda: "CP1" in p.links and scada.connections, timeout=5)
            flood = 5_000
            for i in range(flood):
                await scada.ws.send(
                    f'[2,"f{i}","TriggerMessage",{{"requestedMessage":"Heartbeat"}}]'
                )
            link = p.links["CP1"]
            await until(lambda: len(scada.received) >= flood - 51, timeout=10)
            assert len(link.to_charger) <= 50
            refused = [json.loads(r) for r in scada.received]
            assert all(r[0] == 4 and r[2] == "GenericError" for r in refused)
            assert await recv(cp) == '[2,"f0","TriggerMessage",{"requestedMessage":"Heartbeat"}]'
            call = link.call("ClearChargingProfile", {"id": cfg.profile_id_base + 1})
            async with asyncio.timeout(8):  # f0 unanswered: call_timeout, then ours, not f1
                await call.sent
            ours = json.loads(await recv(cp))
            assert ours[1] == call.id and ours[2] == "ClearChargingProfile"
            await cp.send(json.dumps([3, call.id, {"status": "Accepted"}]))
            assert json.loads(await recv(cp))[1] == "f1"  # then the SCADA's, in order
    finally:
        await scada.stop()


async def test_a_charger_flood_is_not_read_faster_than_it_moves(tmp_path):
    # SCADA away and a call held: the charger's next frames wait in TCP, not in memory.
    scada = await RawScada().start()
    cfg = config(scada.url, queue_limit=20, hold_timeout=2, reconnect_max=0.2)
    async with proxy(cfg, tmp_path) as p, charger(p.port, close_timeout=0.5) as cp:
        await until(lambda: "CP1" in p.links, timeout=5)
        await scada.stop()
        await until(lambda: not p.links["CP1"].up.is_set(), timeout=5)
        for i in range(500):
            await cp.send(f'[2,"a{i}","Authorize",{{"idTag":"T{i}"}}]')  # held: SCADA only
        await asyncio.sleep(0.3)
        assert len(p.links["CP1"].incoming) <= 20
