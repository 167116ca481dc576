"""SCADA outages: transaction messages are never lost and keep their order at the SCADA, each
once but for the charger's call in flight when the SCADA connection drops (then twice, with the
same id); the charger stays connected (local control keeps working) as long as the proxy
can answer it; a call only the SCADA can answer closes the charger link after hold_timeout."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from extensions.ocpp_proxy.sim_charger import SimCharger
from extensions.ocpp_proxy.sim_csms import SimCsms
from extensions.sdk.testing import until

from .support import RawScada, charger, config, ok, proxy, recv

pytestmark = pytest.mark.timeout(40)


def mv(i: int) -> str:
    return (
        f'[2,"mv{i}","MeterValues",{{"connectorId":1,"transactionId":77,"meterValue":'
        f'[{{"timestamp":"2024-05-01T10:00:0{i}Z","sampledValue":[{{"value":"{1000 + i}"}}]}}]}}]'
    )


async def test_an_outage_is_bridged_in_order_without_loss_or_duplicate(tmp_path):
    scada = await RawScada(answer=ok).start()
    port = scada.port
    cfg = config(scada.url, hold_timeout=10, reconnect_max=0.2)
    async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
        await cp.send(mv(0))
        assert await recv(cp) == '[3, "mv0", {}]'  # the SCADA's own answer, as it wrote it
        await scada.stop()  # the SCADA goes away
        await until(lambda: not p.links["CP1"].up.is_set(), timeout=5)
        status = '[2,"st1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Charging"}]'  # noqa: E501
        for frame in (status, mv(1), mv(2)):
            await cp.send(frame)
            assert await recv(cp) == f'[3,"{json.loads(frame)[1]}",{{}}]'  # the proxy's answer
        await cp.send('[2,"hb","Heartbeat",{}]')
        assert json.loads(await recv(cp))[2]["currentTime"].endswith("Z")
        stop = '[2,"stop1","StopTransaction",{"transactionId":77,"meterStop":1003,"timestamp":"2024-05-01T10:00:09Z"}]'  # noqa: E501
        await cp.send(stop)
        assert await recv(cp) == '[3,"stop1",{}]'
        store = tmp_path / "CP1.ocpp1.6.jsonl"  # per charge point and OCPP version
        assert [json.loads(line) for line in store.read_text().splitlines()] == [
            status,
            mv(1),
            mv(2),
            stop,
        ]
        start = '[2,"start2","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":1003,"timestamp":"2024-05-01T10:01:00Z"}]'  # noqa: E501
        await cp.send(start)  # only the SCADA can answer this one: held
        scada2 = await RawScada(port=port, answer=ok).start()
        try:
            reply = await recv(cp, timeout=10)
            assert (
                reply == '[3, "start2", {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}]'
            )
            # Each stored frame delivered once, in order, then the held one; no heartbeat.
            assert scada2.received == [status, mv(1), mv(2), stop, start]
            assert store.read_text() == ""
        finally:
            await scada2.stop()


async def test_a_call_only_the_scada_can_answer_closes_the_link_after_hold_timeout(tmp_path):
    scada = await RawScada(answer=ok).start()
    cfg = config(scada.url, hold_timeout=0.5, reconnect_max=0.2)
    async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
        await cp.send(mv(0))
        await recv(cp)
        await scada.stop()
        await until(lambda: not p.links["CP1"].up.is_set(), timeout=5)
        await cp.send('[2,"auth1","Authorize",{"idTag":"T"}]')
        with pytest.raises(ConnectionClosed) as closed:
            await recv(cp, timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert scada.received == [mv(0)]  # the charger's own queue keeps the Authorize


async def test_a_call_in_flight_when_the_scada_connection_drops_is_answered_and_stored(tmp_path):
    scada = await RawScada(answer=lambda raw: None if '"mv1"' in str(raw) else ok(raw)).start()
    port = scada.port
    cfg = config(scada.url, hold_timeout=10, reconnect_max=0.2)
    async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
        await cp.send(mv(0))
        assert await recv(cp) == '[3, "mv0", {}]'
        await cp.send(mv(1))
        assert await scada.frame(1) == mv(1)  # the SCADA has it, and goes away unanswered
        await scada.stop()
        assert await recv(cp) == '[3,"mv1",{}]'  # the proxy's answer
        store = tmp_path / "CP1.ocpp1.6.jsonl"
        assert [json.loads(line) for line in store.read_text().splitlines()] == [mv(1)]
        await cp.send(mv(2))
        assert await recv(cp) == '[3,"mv2",{}]'
        assert [json.loads(line) for line in store.read_text().splitlines()] == [mv(1), mv(2)]
        scada2 = await RawScada(port=port, answer=ok).start()
        try:
            await scada2.frame(1, timeout=10)
            await cp.send(mv(3))
            assert await recv(cp) == '[3, "mv3", {}]'  # the SCADA's own answer again
            # mv1 twice (the SCADA may have had it: same id), before everything after it.
            assert scada.received + scada2.received == [mv(0), mv(1), mv(1), mv(2), mv(3)]
            await until(lambda: store.read_text() == "", timeout=5)
        finally:
            await scada2.stop()


async def test_a_held_call_in_flight_when_the_scada_connection_drops_is_sent_again(tmp_path):
    auth = '[2,"auth1","Authorize",{"idTag":"T"}]'
    scada = await RawScada().start()  # answers nothing
    port = scada.port
    cfg = config(scada.url, hold_timeout=10, reconnect_max=0.2)
    async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
        await cp.send(auth)
        assert await scada.frame(0) == auth
        await scada.stop()
        await until(lambda: not p.links["CP1"].up.is_set(), timeout=5)
        await until(lambda: len(p.links["CP1"].incoming) == 1, timeout=5)  # held
        answer = '[3,"auth1",{"idTagInfo":{"status":"Accepted"}}]'
        scada2 = await RawScada(port=port, answer=lambda raw: answer).start()
        try:
            assert await recv(cp, timeout=10) == answer  # only the SCADA answers it
            assert scada.received + scada2.received == [auth, auth]
            assert len(p.links["CP1"].store) == 0  # held, never stored
        finally:
            await scada2.stop()


async def test_scada_restart_mid_transaction_with_real_ocpp_peers(tmp_path):
    csms = await SimCsms().start()
    port = csms.port
    cfg = config(csms.url, reconnect_max=0.1)
    async with proxy(cfg, tmp_path) as p:
        sim = SimCharger(
            f"ws://127.0.0.1:{p.port}/CP1",
            interval=0.05,
            session_s=3.0,
            call_timeout=2.0,
            retry_interval=0.2,
        )
        task = asyncio.create_task(sim.run(plug_after=0.05))
        await until(lambda: sim.tx_id is not None, timeout=10)
        await asyncio.sleep(0.3)
        await csms.stop()  # mid-transaction
        await asyncio.sleep(0.5)
        csms2 = await SimCsms(port=port).start()
        try:
            await until(lambda: any("StopTransaction" in f for f in sim.sent), timeout=30)
            await until(lambda: any("StopTransaction" in f for f in csms2.frames["CP1"]), 20)
        finally:
            task.cancel()
            await csms2.stop()
    # Every transaction message once, in order; the charger's call in flight when the SCADA
    # connection dropped may arrive twice, with the same id, once on each side of the restart.
    transaction = list(
        dict.fromkeys(f for f in sim.sent if "MeterValues" in f or "Transaction" in f)
    )
    before = [f for f in csms.frames["CP1"] if f in transaction]
    after = [f for f in csms2.frames["CP1"] if f in transaction]
    if before and after and before[-1] == after[0]:
        after = after[1:]  # the one repeat: the same frame, the same message id
    assert before + after == transaction
    assert len(transaction) > 20
