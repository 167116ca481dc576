"""The proxy's own charging profile belongs to the site's local control (docs/OCPP.md, "Local
control").

Attack: the SCADA (hostile, or configured without knowing the proxy) sends a
SetChargingProfile with the proxy's profile id, or on its stack level and purpose, or a
ClearChargingProfile without criteria. Forwarded as is, the charger replaces or drops the
local limit while the core still shows the setpoint APPLIED.

Rule: a SetChargingProfile with one of our ids, or our stack level with our purpose, and a
ClearChargingProfile of our id are answered with a CALLERROR to the SCADA and never reach the
charger. A ClearChargingProfile without an id is forwarded (the SCADA's own profiles are its
business); once the charger answered it, the proxy sends its profile in force again, and
reports the outcome anew when the charger now refuses it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from extensions.ocpp_proxy.control import Control
from extensions.sdk import Applied, Rejected, SetpointRequest
from extensions.sdk.testing import until

from .support import RawScada, charger, config, proxy, recv

pytestmark = pytest.mark.timeout(30)


def set_profile(id: str, profile_id: int, stack_level: int, purpose: str) -> str:
    return json.dumps(
        [
            2,
            id,
            "SetChargingProfile",
            {
                "connectorId": 0,
                "csChargingProfiles": {
                    "chargingProfileId": profile_id,
                    "stackLevel": stack_level,
                    "chargingProfilePurpose": purpose,
                    "chargingProfileKind": "Absolute",
                    "chargingSchedule": {
                        "chargingRateUnit": "A",
                        "startSchedule": "2024-05-01T10:00:00Z",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 63.0}],
                    },
                },
            },
        ]
    )


class FakeExtension:
    """What Control needs of the SDK: handler registration and outcome reports."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.reports: list[tuple[str, Any]] = []
        self.setpoints = self

    def on_setpoint(self, name: str, **kw: Any) -> Any:
        return lambda handler: self.handlers.setdefault(name, handler)

    async def report_outcome(self, req: SetpointRequest, outcome: Any) -> None:
        self.reports.append((req.id, outcome))


async def test_the_scada_cannot_replace_or_clear_ours_by_id_or_stack_level(tmp_path):
    scada = await RawScada().start()
    cfg = config(scada.url)
    ours = cfg.profile_id_base + 1
    refused = {
        "s1": set_profile("s1", ours, 0, "TxDefaultProfile"),  # our id
        "s2": set_profile("s2", 42, cfg.stack_level, "ChargePointMaxProfile"),  # level+purpose
        "s3": f'[2,"s3","ClearChargingProfile",{{"id":{ours}}}]',
    }
    allowed = set_profile("s4", 42, cfg.stack_level, "TxDefaultProfile")  # no collision
    try:
        async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
            await until(lambda: scada.connections, timeout=5)
            for frame in refused.values():
                await scada.ws.send(frame)
            for i, id in enumerate(refused):
                answer = json.loads(await scada.frame(i))
                assert answer[:3] == [4, id, "PropertyConstraintViolation"]
                assert "local control" in answer[3]
            await scada.ws.send(allowed)
            assert await recv(cp) == allowed  # the first and only frame the charger gets
    finally:
        await scada.stop()


async def test_a_clear_all_is_forwarded_and_ours_is_sent_again(tmp_path):
    scada = await RawScada().start()
    cfg = config(scada.url, answer_timeout=1)
    ext = FakeExtension()
    try:
        async with proxy(cfg, tmp_path) as p, charger(p.port) as cp:
            await until(lambda: "CP1" in p.links and scada.connections, timeout=5)
            control = Control(ext, cfg, p)  # type: ignore[arg-type]
            link = p.links["CP1"]
            control.reconnected("CP1", link)
            cleared = json.loads(await recv(cp))  # nothing in force at connection: ours cleared
            assert cleared[2:] == ["ClearChargingProfile", {"id": cfg.profile_id_base + 1}]
            await cp.send(json.dumps([3, cleared[1], {"status": "Accepted"}]))
            req = SetpointRequest("sp1", "ev1/I_max_set", 16.0, "planner", time.time() + 600)
            applying = asyncio.ensure_future(control.apply(req))
            ours = json.loads(await recv(cp))
            assert ours[2] == "SetChargingProfile"
            await cp.send(json.dumps([3, ours[1], {"status": "Accepted"}]))
            assert await applying == Applied(16.0)

            clear_all = '[2,"scada-2","ClearChargingProfile",{}]'
            await scada.ws.send(clear_all)
            assert await recv(cp) == clear_all  # forwarded as is
            await cp.send('[3,"scada-2",{"status":"Accepted"}]')
            assert await scada.frame(0) == '[3,"scada-2",{"status":"Accepted"}]'
            again = json.loads(await recv(cp))  # ours, right after
            assert again[2] == "SetChargingProfile" and again[3] == ours[3] | {
                "csChargingProfiles": again[3]["csChargingProfiles"]
            }
            assert again[3]["csChargingProfiles"]["chargingProfileId"] == cfg.profile_id_base + 1
            await cp.send(json.dumps([3, again[1], {"status": "Accepted"}]))
            await until(lambda: ext.reports, timeout=3)
            assert ext.reports == [("sp1", Applied(16.0))]

            # The charger now refuses it: the setpoint is no longer APPLIED.
            await scada.ws.send('[2,"scada-3","ClearChargingProfile",{}]')
            await recv(cp)
            await cp.send('[3,"scada-3",{"status":"Accepted"}]')
            again = json.loads(await recv(cp))
            await cp.send(json.dumps([3, again[1], {"status": "Rejected"}]))
            await until(lambda: len(ext.reports) == 2, timeout=3)
            outcome = ext.reports[1][1]
            assert isinstance(outcome, Rejected)
            assert "the SCADA cleared the charging profiles" in outcome.reason
            assert control.in_force == {}
            assert scada.received[1:] == ['[3,"scada-3",{"status":"Accepted"}]']  # none of ours
    finally:
        await scada.stop()
