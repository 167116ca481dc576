"""The observer (frames parsed on the side into points) never affects forwarding.

Attack: a schema-valid frame the observer chokes on. 2.0.1 `unitOfMeasure.multiplier` is an
unbounded integer in the schema, and 10.0 ** 400 overflows; a 1.6 StartTransaction with a
string `meterStart` is forwarded (invalid_frames = "forward") and the SCADA's answer is
observed with arithmetic on it. If the observer raises before the frame is queued, or kills
the link, the frame never reaches its peer, the charger sends it again after reconnecting
(a transaction duplicated at the SCADA, or a queue wedged behind a billing frame).

Rule: a frame is queued before it is observed, every observer call is guarded (logged once
per kind, forwarding goes on), multipliers outside -10..10 and fields of the wrong type are
skipped, and the observer's tables stay bounded whatever ids a charger sends.
"""

from __future__ import annotations

import json

import pytest

from extensions.ocpp_proxy.frames import CALL, Frame
from extensions.ocpp_proxy.meter import sampled_values
from extensions.ocpp_proxy.observe import TRANSACTIONS, Observer
from extensions.sdk.testing import until

from .support import RawScada, charger, config, ok, proxy, recv

pytestmark = pytest.mark.timeout(30)


def transaction_ended(multiplier: int) -> str:
    return json.dumps(
        [
            2,
            "te1",
            "TransactionEvent",
            {
                "eventType": "Ended",
                "timestamp": "2024-05-01T10:00:00Z",
                "triggerReason": "StopAuthorized",
                "seqNo": 3,
                "transactionInfo": {"transactionId": "T1"},
                "evse": {"id": 1},
                "meterValue": [
                    {
                        "timestamp": "2024-05-01T10:00:00Z",
                        "sampledValue": [
                            {
                                "value": 12.5,
                                "unitOfMeasure": {"unit": "Wh", "multiplier": multiplier},
                            }
                        ],
                    }
                ],
            },
        ]
    )


async def test_a_huge_201_multiplier_is_forwarded_and_not_read(tmp_path):
    scada = await RawScada(answer=ok).start()
    seen: list[dict] = []
    try:
        async with (
            proxy(config(scada.url), tmp_path, emit=lambda cp, n, r: seen.append(r)) as p,
            charger(p.port, version="ocpp2.0.1") as cp,
        ):
            await until(lambda: "CP1" in p.links, timeout=5)
            frame = transaction_ended(400)
            await cp.send(frame)
            assert json.loads(await recv(cp, timeout=3))[1] == "te1"  # the SCADA's answer
            assert scada.received == [frame]
            assert not any("Ap" in r for r in seen)  # 12.5 x 10^400 Wh is no reading
    finally:
        await scada.stop()


async def test_a_field_of_the_wrong_type_does_not_break_the_transaction(tmp_path):
    scada = await RawScada(answer=ok).start()
    start = (
        '[2,"s1","StartTransaction",{"connectorId":1,"idTag":"T","meterStart":"1003",'
        '"timestamp":"2024-05-01T10:01:00Z"}]'
    )
    try:
        async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
            await until(lambda: "CP1" in p.links, timeout=5)
            await cp.send(start)
            reply = await recv(cp, timeout=3)
            assert json.loads(reply)[2]["transactionId"] == 77  # the charger has its id
            assert p.links["CP1"].observer.connector(1).tx_id == "77"
            assert scada.received == [start]  # once
    finally:
        await scada.stop()


async def test_an_observer_that_raises_is_logged_once_and_forwarding_goes_on(tmp_path, caplog):
    scada = await RawScada(answer=ok).start()

    def broken(cp: str, n: int, readings: dict) -> None:
        raise RuntimeError("the device is gone")

    status = '[2,"st{}","StatusNotification",{{"connectorId":1,"errorCode":"NoError","status":"Charging"}}]'  # noqa: E501
    try:
        async with proxy(config(scada.url), tmp_path, emit=broken) as p, charger(p.port) as cp:
            for i in range(3):
                await cp.send(status.format(i))
                assert json.loads(await recv(cp, timeout=3))[1] == f"st{i}"
            assert scada.received == [status.format(i) for i in range(3)]
    finally:
        await scada.stop()
    lines = [r for r in caplog.records if "could not be observed" in r.getMessage()]
    assert len(lines) == 1


def test_sampled_values_skip_what_cannot_be_a_reading():
    assert sampled_values([{"value": 1.5, "unitOfMeasure": {"unit": "kWh", "multiplier": 3}}]) == {
        "Ap": 1500.0
    }
    for sample in (
        {"value": 1.5, "unitOfMeasure": {"unit": "Wh", "multiplier": 11}},
        {"value": 1.5, "unitOfMeasure": {"unit": "Wh", "multiplier": -400}},
        {"value": 1.5, "unitOfMeasure": {"unit": "Wh", "multiplier": True}},
        {"value": 1.5, "unitOfMeasure": {"unit": ["Wh"]}},
        {"value": 10**400},
        {"value": "1", "measurand": ["Voltage"]},
        {"value": 1e300, "unitOfMeasure": {"unit": "kW", "multiplier": 10}},
    ):
        assert sampled_values([sample]) == {}, sample


def test_the_observer_tables_stay_bounded():
    emitted: list[int] = []
    obs = Observer("1.6", lambda n, r: emitted.append(n), connectors=2)
    for i in range(10_000):
        payload = {"connectorId": 1 + i % 1000, "transactionId": i, "meterValue": []}
        obs.seen("cp", Frame(CALL, f"m{i}", "MeterValues", payload))
    assert set(obs.connectors) <= {1, 2} and set(emitted) <= {1, 2}
    assert len(obs.tx_connector) <= TRANSACTIONS
    obs.seen("cp", Frame(CALL, "bad", "TransactionEvent", {"transactionInfo": ["x"]}))
    obs.seen("cp", Frame(CALL, "bad2", "StopTransaction", {"transactionId": 1, "meterStop": "x"}))


def test_power_and_current_fall_to_zero_when_a_transaction_ends():
    # A charger's last MeterValues was of the running transaction (11 kW); many send nothing
    # until the next one, and ev1/P has no period: without this it read 11 kW for hours.
    emitted: list[tuple[int, dict]] = []
    obs = Observer("1.6", lambda n, r: emitted.append((n, dict(r))), connectors=1)
    sample = [
        {"value": "11040", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "16", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
        {"value": "230", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
        {"value": "16", "measurand": "Current.Offered", "unit": "A"},
    ]
    meter = {"connectorId": 1, "transactionId": 7, "meterValue": [{"sampledValue": sample}]}
    obs.seen("cp", Frame(CALL, "m1", "MeterValues", meter))
    stop = {"transactionId": 7, "meterStop": 5000, "timestamp": "2024-05-01T10:00:00Z"}
    obs.seen("cp", Frame(CALL, "s1", "StopTransaction", stop))
    n, readings = emitted[-1]
    assert n == 1 and readings["tx_active"].value is False
    assert {k: r.value for k, r in readings.items() if k in ("P", "I1", "U1", "I_offered")} == {
        "P": 0.0,
        "I1": 0.0,
    }
