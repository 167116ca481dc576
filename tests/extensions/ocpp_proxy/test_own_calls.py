"""The proxy's own calls: exact bytes at the charger, answers kept from the SCADA, one CALL
outstanding at the charger at a time, and ids that cannot collide with the SCADA's, under
load."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from extensions.ocpp_proxy.frames import CALL, CALLRESULT
from extensions.ocpp_proxy.profiles import clear_profile, set_profile
from extensions.sdk.testing import until

from .support import RawScada, charger, config, proxy, recv

pytestmark = pytest.mark.timeout(30)

T = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.UTC)


def test_profile_payloads_are_exact():
    p16 = set_profile("1.6", profile_id=917001, stack_level=8, purpose="ChargePointMaxProfile",
                      connector=1, unit="A", limit=10.5, valid_to=T + dt.timedelta(minutes=15),
                      now=T)  # fmt: skip
    assert json.dumps(p16, separators=(",", ":")) == (
        '{"connectorId":0,"csChargingProfiles":{"chargingProfileId":917001,"stackLevel":8,'
        '"chargingProfilePurpose":"ChargePointMaxProfile","chargingProfileKind":"Absolute",'
        '"validTo":"2024-05-01T10:15:00Z","chargingSchedule":{"chargingRateUnit":"A",'
        '"startSchedule":"2024-05-01T10:00:00Z","chargingSchedulePeriod":[{"startPeriod":0,'
        '"limit":10.5}]}}}'
    )
    p201 = set_profile("2.0.1", profile_id=917002, stack_level=8, purpose="TxProfile",
                       connector=2, unit="W", limit=7000.0, valid_to=T, transaction_id="abc",
                       now=T)  # fmt: skip
    assert p201["evseId"] == 2 and p201["chargingProfile"]["transactionId"] == "abc"
    assert p201["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"
    assert p201["chargingProfile"]["chargingSchedule"][0]["chargingRateUnit"] == "W"
    assert clear_profile("1.6", 917001) == {"id": 917001}
    assert clear_profile("2.0.1", 917001) == {"chargingProfileId": 917001}


async def test_our_call_reaches_the_charger_and_its_answer_never_the_scada(tmp_path):
    scada = await RawScada().start()
    async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
        await until(lambda: "CP1" in p.links)
        link = p.links["CP1"]
        call = link.call("ClearChargingProfile", {"id": 917001})
        raw = await recv(cp)
        assert call.sent.done()
        assert raw == f'[2,"{call.id}","ClearChargingProfile",{{"id":917001}}]'
        assert call.id.startswith("smx-")
        await cp.send(f'[3,"{call.id}",{{"status":"Unknown"}}]')
        answer = await asyncio.wait_for(call.answer, 5)
        assert (answer.kind, answer.payload) == (CALLRESULT, {"status": "Unknown"})
        await cp.send('[2,"hb","Heartbeat",{}]')
        assert await scada.frame(0) == '[2,"hb","Heartbeat",{}]'
        assert scada.received == ['[2,"hb","Heartbeat",{}]']  # not our answer
    await scada.stop()


async def test_ids_never_collide_under_load(tmp_path):
    """The SCADA sends 200 calls (some with the very ids the proxy would pick next) while the
    proxy sends 100 of its own; a charger answers each call after a random delay. The
    charger never has two calls outstanding, each answer reaches whoever asked, once."""
    scada = await RawScada().start()
    outstanding: set[str] = set()
    most = 0
    async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
        await until(lambda: "CP1" in p.links)
        link = p.links["CP1"]

        async def charger_side() -> None:
            nonlocal most
            async for raw in cp:
                msg = json.loads(raw)
                assert msg[0] == CALL
                outstanding.add(msg[1])
                most = max(most, len(outstanding))
                await asyncio.sleep(0.001 * (hash(msg[1]) % 3))
                outstanding.discard(msg[1])
                await cp.send(json.dumps([3, msg[1], {"status": "Accepted", "id": msg[1]}]))

        answering = asyncio.create_task(charger_side())
        scada_ids = [f"smx-{link._salt}-{k}" for k in range(1, 60)] + [f"s{k}" for k in range(141)]

        async def scada_side() -> None:
            for sid in scada_ids:
                await scada.ws.send(json.dumps([2, sid, "ClearCache", {}]))
                await asyncio.sleep(0)

        async def proxy_side() -> list[tuple[str, dict]]:
            calls = []
            for _ in range(100):
                calls.append(link.call("ClearCache", {}))
                await asyncio.sleep(0)
            answers = await asyncio.gather(*(asyncio.wait_for(c.answer, 20) for c in calls))
            return [(c.id, a.payload) for c, a in zip(calls, answers, strict=True)]

        # The SCADA uses the very ids the proxy would pick next; then both send at once.
        for sid in scada_ids[:59]:
            await scada.ws.send(json.dumps([2, sid, "ClearCache", {}]))
        await until(lambda: len(link.recent_scada_ids) >= 59)
        scada_ids_late = scada_ids[59:]
        scada_ids_all, scada_ids = scada_ids, scada_ids_late
        _, ours = await asyncio.gather(scada_side(), proxy_side())
        scada_ids = scada_ids_all
        await scada.frame(len(scada_ids) - 1, timeout=20)
        answering.cancel()
    await scada.stop()
    assert most == 1  # one CALL outstanding at the charger at any time
    assert all(answer["id"] == id for id, answer in ours)  # each proxy call got its own answer
    assert not set(scada_ids[:59]) & {id for id, _ in ours}  # never an id the SCADA used
    answered = [json.loads(f)[1] for f in scada.received]
    assert sorted(answered) == sorted(scada_ids)  # every SCADA call answered, once, to it
