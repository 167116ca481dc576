"""Frames cross the proxy byte for byte, in order, both ways: the bytes each side receives are
asserted, whitespace, key order and ids included."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support import RawScada, charger, config, proxy, recv

pytestmark = pytest.mark.timeout(30)

BOOT = '[2,"boot-1","BootNotification",{"chargePointVendor":"ACME","chargePointModel":"X"}]'
# As some chargers send them: spaces, unusual key order, a numeric-looking id.
STATUS = '[2, "445181359" ,"StatusNotification",{"info": "","connectorId": 1,"errorCode": "NoError","status": "SuspendedEVSE"}]'  # noqa: E501
BOOT_OK = '[3,"boot-1",{"currentTime":"2024-01-01T00:00:00Z","interval":10,"status":"Accepted"}]'


@pytest.fixture
async def scada():
    s = await RawScada().start()
    yield s
    await s.stop()


async def test_frames_arrive_byte_identical_both_ways(scada, tmp_path):
    async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
        assert cp.subprotocol == "ocpp1.6"
        await cp.send(BOOT)
        assert await scada.frame(0) == BOOT
        assert scada.paths == ["/ocpp/CP1"]
        assert scada.ws.subprotocol == "ocpp1.6"
        await scada.ws.send(BOOT_OK)
        assert await recv(cp) == BOOT_OK
        await cp.send(STATUS)
        assert await scada.frame(1) == STATUS
        # The SCADA's own call, its id and spacing untouched; and the charger's answer.
        remote = '[2,"4080794022","RemoteStartTransaction",{"connectorId":1,"idTag":"evcc"}]'
        await scada.ws.send(remote)
        assert await recv(cp) == remote
        await cp.send('[3,"4080794022",{"status": "Accepted"}]')
        assert await scada.frame(2) == '[3,"4080794022",{"status": "Accepted"}]'


async def test_order_is_kept_under_a_burst(scada, tmp_path):
    frames = [
        f'[2,"m{i}","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":"2024-01-01T00:00:{i % 60:02d}Z","sampledValue":[{{"value":"{i}"}}]}}]}}]'  # noqa: E501
        for i in range(300)
    ]
    async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
        for f in frames:
            await cp.send(f)
        await scada.frame(len(frames) - 1)
        assert scada.received == frames


async def test_ocpp201_is_negotiated_with_the_scada(tmp_path):
    scada = await RawScada().start(subprotocols=("ocpp2.0.1", "ocpp1.6"))
    try:
        async with (
            proxy(config(scada.url), tmp_path) as p,
            charger(p.port, version="", subprotocols=["ocpp2.0.1", "ocpp1.6"]) as cp,
        ):
            assert cp.subprotocol == "ocpp2.0.1"
            assert scada.ws.subprotocol == "ocpp2.0.1"
    finally:
        await scada.stop()


async def test_scada_choice_wins(tmp_path):
    scada = await RawScada().start(subprotocols=("ocpp1.6",))
    try:
        async with (
            proxy(config(scada.url), tmp_path) as p,
            charger(p.port, version="", subprotocols=["ocpp2.0.1", "ocpp1.6"]) as cp,
        ):
            assert cp.subprotocol == scada.ws.subprotocol == "ocpp1.6"
    finally:
        await scada.stop()


async def test_no_subprotocol_is_refused_unless_lenient(scada, tmp_path):
    async with proxy(config(scada.url), tmp_path) as p:
        with pytest.raises(InvalidStatus) as refused:
            async with charger(p.port, version=""):
                pass
        assert refused.value.response.status_code == 400
    async with (
        proxy(config(scada.url, lenient_subprotocol=True), tmp_path) as p,
        charger(p.port, version="") as cp,
    ):
        assert cp.subprotocol is None
        assert scada.ws.subprotocol == "ocpp1.6"  # the charge point's default_version
        await cp.send(BOOT)
        assert await scada.frame(0) == BOOT


async def test_unknown_charge_point_is_refused(scada, tmp_path):
    async with proxy(config(scada.url), tmp_path) as p:
        with pytest.raises(InvalidStatus) as refused:
            async with charger(p.port, cp_id="NOPE"):
                pass
        assert refused.value.response.status_code == 401  # as a wrong password: ids stay secret
    assert scada.connections == []


async def test_oversized_frames_close_the_link(scada, tmp_path):
    async with proxy(config(scada.url, max_frame=2048), tmp_path) as p, charger(p.port) as cp:
        await cp.send('[2,"x","DataTransfer",{"vendorId":"' + "a" * 4096 + '"}]')
        with pytest.raises(ConnectionClosed) as closed:
            await recv(cp)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert scada.received == []


@pytest.mark.parametrize(
    ("frame", "answer"),
    [
        (
            "not json",
            '[4,"-1","FormationViolation","not JSON: Expecting value: line 1 column 1 (char 0)",{}]',  # noqa: E501
        ),
        ('[2,"a1","Heartbeat"]', '[4,"a1","ProtocolError","3 elements, expected 4",{}]'),
        ('[2,"a2","StatusNotification",{"connectorId":"one"}]', None),
        (
            '[2,"a3","Teleport",{}]',
            '[4,"a3","NotImplemented","\'Teleport\' is not an OCPP 1.6 action",{}]',
        ),  # noqa: E501
    ],
)
async def test_invalid_frames_refused_or_forwarded(scada, tmp_path, frame, answer):
    async with (
        proxy(config(scada.url, invalid_frames="refuse"), tmp_path) as p,
        charger(p.port) as cp,
    ):
        await cp.send(frame)
        reply = await recv(cp)
        if answer is not None:
            assert reply == answer
        else:
            assert reply.startswith('[4,"a2","')  # a schema error, named by the schema
        await cp.send(BOOT)
        assert await scada.frame(0) == BOOT  # the invalid frame never reached the SCADA
    async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
        await cp.send(frame)
        assert await scada.frame(1) == frame  # forwarded as it was (and logged)


async def test_reconnect_storm_leaves_one_session(scada, tmp_path):
    async with proxy(config(scada.url), tmp_path) as p:
        clients = []
        for _ in range(30):
            clients.append(await charger(p.port).__aenter__())
        last = clients[-1]
        await last.send(BOOT)
        assert await scada.frame(0) == BOOT
        for old in clients[:-1]:
            with pytest.raises(ConnectionClosed):
                await recv(old, timeout=5)
        await asyncio.sleep(0.2)
        assert len(p.links) == 1
        open_upstreams = [c for c in scada.connections if c.state.name == "OPEN"]
        assert len(open_upstreams) == 1
        for c in clients:
            await c.close()
