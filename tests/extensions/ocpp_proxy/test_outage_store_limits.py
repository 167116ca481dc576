"""The outage store under attack and after accidents (docs/OCPP.md, "Upstream outage").

- A charger (hostile, or simply a long outage) must not fill the SD card: the store is bounded
  per charge point in bytes and in frames; at the bound the proxy stops answering and holds
  the call, so the charger's own offline queue keeps it.
- Draining must not rewrite the store per delivered frame (O(n^2) bytes written to the card,
  in the event loop): a delivered frame costs a 5-byte mark, compaction is rare and off the
  event loop.
- A damaged file (a torn last line after a power cut, a line that is JSON but not a frame)
  must neither keep the charger out nor leak SCADA connections: damaged lines are set aside,
  the rest is delivered.
- Frames stored under one OCPP version are never replayed over a connection of the other.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.exceptions import ConnectionClosed

from extensions.ocpp_proxy.store import OutageStore
from extensions.sdk.testing import until

from .support import RawScada, charger, config, ok, proxy, recv

pytestmark = pytest.mark.timeout(30)

STATUS = (
    '[2,"st1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available"}]'
)


def meter_values(i: int, size: int = 100) -> str:
    # Schema-valid 1.6 MeterValues: a sampledValue's `value` string has no maxLength.
    return json.dumps(
        [
            2,
            f"mv{i}",
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {"timestamp": "2024-05-01T10:00:00Z", "sampledValue": [{"value": "1" * size}]}
                ],
            },
        ]
    )


@pytest.mark.parametrize(
    ("limits", "size"),
    [({"store_max_bytes": 65_536}, 20_000), ({"store_max_frames": 10}, 100)],
)
async def test_a_full_store_holds_the_call_instead_of_answering_it(tmp_path, caplog, limits, size):
    scada = await RawScada(answer=ok).start()
    cfg = config(scada.url, reconnect_max=0.2, hold_timeout=0.5, **limits)
    async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
        await until(lambda: "CP1" in p.links, timeout=5)
        await scada.stop()
        await until(lambda: not p.links["CP1"].up.is_set(), timeout=5)
        answered = 0
        with pytest.raises(ConnectionClosed) as closed:
            for i in range(100):
                await cp.send(meter_values(i, size))
                await recv(cp, timeout=3)  # the proxy's answer while there is room
                answered += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    store = tmp_path / "CP1.ocpp1.6.jsonl"
    stored = store.read_text().splitlines()
    assert len(stored) == answered  # every answered frame stored, nothing more
    assert [json.loads(line) for line in stored] == [meter_values(i, size) for i in range(answered)]
    if "store_max_frames" in limits:
        assert answered == 10
    else:
        assert 2 <= answered <= 3 and store.stat().st_size <= 65_536
    full = [r for r in caplog.records if "outage store full" in r.getMessage()]
    assert len(full) == 1  # once per episode, however often the call is tried


async def test_draining_marks_frames_instead_of_rewriting_the_file(tmp_path):
    s = OutageStore(tmp_path, "CP1", "ocpp1.6")
    await s.open()
    n = 1200  # ~3.3 h of one MeterValues every 10 s
    frames = [meter_values(i, 800) for i in range(n)]
    for frame in frames:
        assert await s.append(frame)
    size = s.path.stat().st_size
    s.written = 0
    lag = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:  # the event loop must stay free while the store drains
        nonlocal lag
        while not stop.is_set():
            t0 = time.monotonic()
            await asyncio.sleep(0.005)
            lag = max(lag, time.monotonic() - t0 - 0.005)

    tick = asyncio.ensure_future(ticker())
    delivered = []
    while len(s):
        delivered.append(await s.first())
        await s.pop()
    stop.set()
    await tick
    assert delivered == frames
    assert s.written < 2 * size, f"{s.written} bytes written to drain a {size}-byte store"
    # Generous: on a loaded 2-core CI machine a 5 ms timer was seen 0.15 s late; what this
    # guards against, draining by rewriting the file, is caught exactly by `written` above.
    assert lag < 0.5, f"the event loop was blocked for {lag:.3f} s"
    assert s.path.read_bytes() == b""  # drained: truncated

    # Interrupted half-way (a crash): what was marked is not delivered again, the rest is.
    for frame in frames[:10]:
        await s.append(frame)
    for _ in range(4):
        await s.pop()
    again = OutageStore(tmp_path, "CP1", "ocpp1.6")
    await again.open()
    assert len(again) == 6 and await again.first() == frames[4]
    assert [json.loads(line) for line in s.path.read_text().splitlines()] == frames[4:10]


async def test_a_torn_last_line_is_set_aside_and_the_charger_stays_on(tmp_path, caplog):
    # A power cut during an append: the last line stops in the middle of the frame.
    store = tmp_path / "CP1.ocpp1.6.jsonl"
    store.write_text(json.dumps(STATUS) + "\n" + '"[2,\\"mv1\\",\\"MeterVal')
    scada = await RawScada(answer=ok).start()
    cfg = config(scada.url, reconnect_max=0.2)
    try:
        async with proxy(cfg, tmp_path) as p:
            for _ in range(3):  # and again on every reconnection
                async with charger(p.port) as cp:
                    await cp.send('[2,"hb","Heartbeat",{}]')
                    assert json.loads(await recv(cp, timeout=3))[1] == "hb"
                    assert "CP1" in p.links  # the session holds
                await until(lambda: "CP1" not in p.links, timeout=5)
            await until(
                lambda: sum(c.state.name == "OPEN" for c in scada.connections) == 0, timeout=5
            )
        assert scada.received[0] == STATUS  # the good line was delivered, once
        assert scada.received.count(STATUS) == 1
        assert (tmp_path / "CP1.ocpp1.6.jsonl.damaged").read_text() == '"[2,\\"mv1\\",\\"MeterVal\n'
        damaged = [r for r in caplog.records if "damaged lines" in r.getMessage()]
        assert len(damaged) == 1
    finally:
        await scada.stop()


async def test_a_line_that_is_not_a_frame_is_set_aside_and_the_rest_delivered(tmp_path):
    # JSON, but not an OCPP call (tampered, or written by something else), and a store of the
    # layout before stores were kept per version (adopted by the first session).
    lines = [json.dumps("not a frame"), json.dumps(STATUS), "[1, 2]", json.dumps('[3,"x",{}]')]
    (tmp_path / "CP1.jsonl").write_text("\n".join(lines) + "\n")
    scada = await RawScada(answer=ok).start()
    cfg = config(scada.url, reconnect_max=0.2)
    try:
        async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
            await cp.send('[2,"hb","Heartbeat",{}]')
            assert json.loads(await recv(cp, timeout=3))[1] == "hb"
            assert scada.received[0] == STATUS
            assert "CP1" in p.links
        assert not (tmp_path / "CP1.jsonl").exists()
        assert (tmp_path / "CP1.ocpp1.6.jsonl").read_text() == ""
        set_aside = (tmp_path / "CP1.ocpp1.6.jsonl.damaged").read_text().splitlines()
        assert set_aside == [lines[0], lines[2], lines[3]]
    finally:
        await scada.stop()


async def test_frames_stored_under_one_version_are_not_replayed_over_the_other(tmp_path):
    scada = await RawScada(answer=ok).start()
    port = scada.port
    cfg = config(scada.url, reconnect_max=0.2)
    async with proxy(cfg, tmp_path) as p:
        async with charger(p.port) as cp:
            await until(lambda: "CP1" in p.links, timeout=5)
            await scada.stop()
            await until(lambda: not p.links["CP1"].up.is_set(), timeout=5)
            await cp.send(STATUS)
            assert json.loads(await recv(cp))[1] == "st1"  # stored, answered by the proxy
        await until(lambda: "CP1" not in p.links, timeout=5)
        scada2 = await RawScada(port=port, answer=ok).start()
        try:
            async with charger(p.port, version="ocpp2.0.1") as cp:  # firmware update: 2.0.1
                await cp.send('[2,"hb","Heartbeat",{}]')
                assert json.loads(await recv(cp))[1] == "hb"
                assert scada2.received == ['[2,"hb","Heartbeat",{}]']  # no 1.6 frame
            async with charger(p.port) as cp:  # back on 1.6: delivered now
                await cp.send('[2,"hb","Heartbeat",{}]')
                assert json.loads(await recv(cp))[1] == "hb"
                assert scada2.received[1:] == [STATUS, '[2,"hb","Heartbeat",{}]']
        finally:
            await scada2.stop()


async def test_a_failed_session_set_up_closes_its_scada_connection(tmp_path, monkeypatch):
    async def unreadable(self: OutageStore) -> None:
        raise OSError("Input/output error")

    monkeypatch.setattr(OutageStore, "open", unreadable)
    scada = await RawScada(answer=ok).start()
    try:
        async with proxy(config(scada.url), tmp_path) as p:
            for _ in range(3):
                async with charger(p.port) as cp:
                    with pytest.raises(ConnectionClosed) as closed:
                        await recv(cp, timeout=3)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            await until(
                lambda: sum(c.state.name == "OPEN" for c in scada.connections) == 0, timeout=5
            )
            assert len(scada.connections) == 3 and p.links == {}
    finally:
        await scada.stop()
