"""Our profile on the charger matches what is in force, through a real core (docs/OCPP.md,
"Local control"):

- a TxProfile lives as long as its transaction (OCPP 1.6 3.13.4): ours is sent again on every
  StartTransaction while the setpoint is in force, and between transactions the setpoint is
  UNCONFIRMED ("applies at the next transaction"), never APPLIED;
- on every (re)connection the charger's profiles in our id range are made to match: ours
  cleared where nothing is in force (a limit replaced while the charger was away), sent again
  where something is.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from extensions.sdk.testing import until

from .support import RawScada, charger, recv, scada_answers, site_with_proxy

pytestmark = pytest.mark.timeout(60)

OURS = re.compile(r'\[2,"(smx-[0-9a-f]{6}-\d+)","(\w+)",(.*)\]')


async def ours(cp: Any) -> tuple[str, str, dict[str, Any]]:
    """The proxy's next call at the charger: (id, action, payload), written as we write it."""
    raw = await recv(cp)
    m = OURS.fullmatch(str(raw))
    assert m is not None, raw
    return m[1], m[2], json.loads(m[3])


async def status(ctrl: Any, sp_id: str, expected: str) -> Any:
    async def now() -> Any:
        state = await ctrl.get_setpoint(id=sp_id)
        return state if state.status == expected else None

    last = None
    for _ in range(100):
        last = await now()
        if last is not None:
            return last
        await asyncio.sleep(0.05)
    state = await ctrl.get_setpoint(id=sp_id)
    raise AssertionError(f"{sp_id}: {state.status} ({state.reason}), not {expected}")


def start_tx(id: str) -> str:
    return (
        f'[2,"{id}","StartTransaction",{{"connectorId":1,"idTag":"T","meterStart":1000,'
        '"timestamp":"2024-05-01T10:00:00Z"}]'
    )


async def test_our_tx_profile_follows_each_transaction(tmp_path):
    scada_answers.tx = 6  # type: ignore[attr-defined]
    scada = await RawScada(answer=scada_answers).start()
    try:
        async with (
            site_with_proxy(tmp_path, scada, profile="TxProfile") as (proxy, ctrl, _),
            charger(proxy.server.port) as cp,
        ):
            id, action, payload = await ours(cp)  # nothing in force: ours cleared
            assert (action, payload) == ("ClearChargingProfile", {"id": 917001})
            await cp.send(json.dumps([3, id, {"status": "Accepted"}]))

            # No transaction: in force, not claimed to run.
            sp = await until(lambda: ctrl.request_setpoint("ev1/I_max_set", 10.0, 60))
            state = await status(ctrl, sp.id, "UNCONFIRMED")
            assert "no transaction on connector 1: applies at the next one" in state.reason

            for tx, start_id in ((7, "st1"), (8, "st2")):
                await cp.send(start_tx(start_id))
                assert json.loads(await recv(cp)) == [
                    3,
                    start_id,
                    {"transactionId": tx, "idTagInfo": {"status": "Accepted"}},
                ]  # the SCADA's answer first, then ours on its transaction
                id, action, payload = await ours(cp)
                profile = payload["csChargingProfiles"]
                assert (action, payload) == (
                    "SetChargingProfile",
                    {
                        "connectorId": 1,
                        "csChargingProfiles": {
                            "chargingProfileId": 917001,
                            "stackLevel": 8,
                            "chargingProfilePurpose": "TxProfile",
                            "chargingProfileKind": "Absolute",
                            "validTo": profile["validTo"],
                            "chargingSchedule": {
                                "chargingRateUnit": "A",
                                "startSchedule": profile["chargingSchedule"]["startSchedule"],
                                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
                            },
                            "transactionId": tx,
                        },
                    },
                )
                await cp.send(json.dumps([3, id, {"status": "Accepted"}]))
                state = await status(ctrl, sp.id, "APPLIED")
                assert state.applied_value == 10.0

                stop = f'[2,"sp{tx}","StopTransaction",{{"transactionId":{tx},"meterStop":2000,"timestamp":"2024-05-01T11:00:00Z"}}]'  # noqa: E501
                await cp.send(stop)
                assert json.loads(await recv(cp)) == [3, f"sp{tx}", {}]
                state = await status(ctrl, sp.id, "UNCONFIRMED")
                assert "dropped the TxProfile: applies at the next transaction" in state.reason
            # None of ours reached the SCADA.
            assert not any("ChargingProfile" in str(f) for f in scada.received)
    finally:
        await scada.stop()


async def test_a_limit_replaced_while_the_charger_was_away_is_cleared_at_reconnection(tmp_path):
    scada = await RawScada(answer=scada_answers).start()
    try:
        async with site_with_proxy(tmp_path, scada) as (proxy, ctrl, _):
            async with charger(proxy.server.port) as cp:
                id, action, _ = await ours(cp)
                assert action == "ClearChargingProfile"
                await cp.send(json.dumps([3, id, {"status": "Accepted"}]))
                sp8 = await until(lambda: ctrl.request_setpoint("ev1/I_max_set", 8.0, 60))
                id, action, payload = await ours(cp)
                assert payload["csChargingProfiles"]["chargingSchedule"][
                    "chargingSchedulePeriod"
                ] == [{"startPeriod": 0, "limit": 8.0}]
                await cp.send(json.dumps([3, id, {"status": "Accepted"}]))
                await status(ctrl, sp8.id, "APPLIED")
            await until(lambda: "CP1" not in proxy.server.links)
            sp12 = await ctrl.request_setpoint("ev1/I_max_set", 12.0, 60)
            state = await status(ctrl, sp12.id, "REJECTED")
            assert state.reason == "charge point CP1 is not connected"
            await status(ctrl, sp8.id, "SUPERSEDED")

            async with charger(proxy.server.port) as cp:  # nothing in force: ours cleared
                raw = await recv(cp)
                m = OURS.fullmatch(str(raw))
                assert (
                    m is not None and raw == f'[2,"{m[1]}","ClearChargingProfile",{{"id":917001}}]'
                )
                await cp.send(json.dumps([3, m[1], {"status": "Accepted"}]))

                sp6 = await ctrl.request_setpoint("ev1/I_max_set", 6.0, 60)
                id, action, payload = await ours(cp)
                await cp.send(json.dumps([3, id, {"status": "Accepted"}]))
                await status(ctrl, sp6.id, "APPLIED")
            async with charger(proxy.server.port) as cp:  # in force: sent again, reported
                id, action, again = await ours(cp)
                assert action == "SetChargingProfile"
                assert again["csChargingProfiles"]["chargingSchedule"][
                    "chargingSchedulePeriod"
                ] == [{"startPeriod": 0, "limit": 6.0}]
                await cp.send(json.dumps([3, id, {"status": "Rejected"}]))
                state = await status(ctrl, sp6.id, "REJECTED")
                assert state.reason == (
                    "the charge point connected again; sent again: the charger answered Rejected"
                )
    finally:
        await scada.stop()


async def test_unconfirmed_says_whose_call_holds_ours_up(tmp_path):
    scada = await RawScada(answer=scada_answers).start()
    try:
        async with (
            site_with_proxy(tmp_path, scada) as (proxy, ctrl, _),
            charger(proxy.server.port) as cp,
        ):
            clear_id, action, _ = await ours(cp)  # left unanswered: our call holds the slot
            assert action == "ClearChargingProfile"
            sp = await until(lambda: ctrl.request_setpoint("ev1/I_max_set", 10.0, 60))
            state = await status(ctrl, sp.id, "UNCONFIRMED")
            assert state.reason == (
                "charge point CP1 not sent the profile yet (within 1 s): the proxy's previous "
                f"call ({clear_id}) is still unanswered"
            )
            await cp.send(json.dumps([3, clear_id, {"status": "Accepted"}]))
            id, action, _ = await ours(cp)
            await cp.send(json.dumps([3, id, {"status": "Accepted"}]))
            await status(ctrl, sp.id, "APPLIED")

            await until(lambda: scada.connections)
            await scada.ws.send('[2,"s1","GetConfiguration",{}]')
            assert await recv(cp) == '[2,"s1","GetConfiguration",{}]'  # left unanswered
            sp = await ctrl.request_setpoint("ev1/I_max_set", 12.0, 60)
            state = await status(ctrl, sp.id, "UNCONFIRMED")
            assert state.reason == (
                "charge point CP1 not sent the profile yet (within 1 s): a SCADA call (s1) is "
                "still unanswered"
            )
    finally:
        await scada.stop()
