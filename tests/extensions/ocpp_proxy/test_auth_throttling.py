"""Who may open a charger's session, and what the log says about those who may not.

Attack: a local or LAN attacker tries Basic auth passwords (profiles 1 and 2) as fast as
handshakes go, learns which charge point ids exist from the HTTP status, and floods the log
with a WARNING per attempt (hiding other lines past the process's log budget).

Rule: after a few failures a peer, and an id, are blocked for a delay that doubles; an attempt
while blocked is refused like a wrong password without its password being checked; a peer that
authenticated as an id before is not held by that id's block. An unknown id gets the same 401
as a wrong password. Refusals are one log line, then one summary line per interval. Profile 0
on a listener that is not loopback is a warning at start. Invalid frames that may carry
credentials are logged without their text.
"""

from __future__ import annotations

import logging
import time

import pytest
from websockets.exceptions import InvalidStatus

from extensions.ocpp_proxy.config import ChargePointConfig
from extensions.ocpp_proxy.throttle import RefusalLog
from extensions.sdk.testing import until

from .support import RawScada, charger, config, proxy, recv
from .test_security import basic

pytestmark = pytest.mark.timeout(30)


async def attempt(port: int, cp_id: str, password: str) -> int:
    try:
        async with charger(port, cp_id=cp_id, additional_headers=basic(cp_id, password)):
            return 101
    except InvalidStatus as err:
        return err.response.status_code


async def test_password_guessing_is_throttled_and_logged_in_summary(tmp_path, caplog):
    cps = [ChargePointConfig(id="CP1", connectors=["ev1"], security_profile=1,
                             password="correct horse")]  # fmt: skip
    caplog.set_level(logging.WARNING, logger="extensions.ocpp_proxy.server")
    async with proxy(config(charge_points=cps), tmp_path) as p:
        p.refusals.close()
        p.refusals = RefusalLog(interval=1.0)
        p.throttle.first_delay = 0.2
        statuses = set()
        t0 = time.monotonic()
        tries = 0
        while time.monotonic() - t0 < 2.0:
            statuses.add(await attempt(p.port, "CP1", f"guess{tries}"))
            tries += 1
        statuses.add(await attempt(p.port, "NOPE", "x"))  # unknown id: the same answer
        # Blocked: even the right password is not checked (the attacker cannot tell).
        assert await attempt(p.port, "CP1", "correct horse") == 401
        checked = p.throttle.checked
        await until_logged(caplog, "more charger connections refused")
    assert statuses == {401}
    # 5 free, then blocks of 0.2, 0.4, 0.8 s...: a handful of guesses in 2 s, not hundreds.
    assert tries > 50 and checked <= 10, f"{checked} of {tries} guesses checked"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 4, lines
    assert any("more charger connections refused" in line for line in lines)


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    await until(lambda: any(text in r.getMessage() for r in caplog.records), timeout=3)


async def test_a_known_charger_is_not_locked_out_by_guesses_from_elsewhere(tmp_path):
    cps = [ChargePointConfig(id="CP1", connectors=["ev1"], security_profile=1, password="pw")]
    async with proxy(config(charge_points=cps), tmp_path) as p:
        assert await attempt(p.port, "CP1", "pw") == 101  # the charger, from its address
        for _ in range(20):  # guesses for its id from another peer
            p.throttle.failed("192.0.2.7", "CP1")
        assert p.throttle.blocked("192.0.2.8", "CP1")  # a third peer: id blocked
        assert await attempt(p.port, "CP1", "pw") == 101  # the known peer gets in


async def test_profile_0_on_a_public_listener_is_a_warning(tmp_path, caplog):
    cfg = config(host="0.0.0.0")
    async with proxy(cfg, tmp_path):
        pass
    assert any("security profile 0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    async with proxy(config(), tmp_path):
        pass
    assert not any("security profile 0" in r.getMessage() for r in caplog.records)


async def test_invalid_frames_never_log_credentials(tmp_path, caplog):
    scada = await RawScada().start()
    secret = "hunter2-very-secret"
    frames = [
        # 1.6: ChangeConfiguration with a value of the wrong type; 2.0.1 style in a 1.6 frame
        f'[2,"c1","ChangeConfiguration",{{"key":"AuthorizationKey","value":["{secret}"]}}]',
        f'[2,"c2","SetVariables",{{"setVariableData":[{{"attributeValue":"{secret}"}}]}}]',
        f'[2,"c3","ChangeConfiguration",{{"key":"AuthorizationKey","value":"{secret}"',  # torn
    ]
    try:
        async with proxy(config(scada.url), tmp_path) as p, charger(p.port) as cp:
            await until(lambda: "CP1" in p.links and scada.connections, timeout=5)
            for frame in frames:
                await scada.ws.send(frame)
                assert await recv(cp) == frame  # forwarded (invalid_frames = "forward")
                if frame.endswith("]"):
                    await cp.send(f'[4,"{frame[4:6]}","NotSupported","",{{}}]')
    finally:
        await scada.stop()
    invalid = [r.getMessage() for r in caplog.records if "invalid frame" in r.getMessage()]
    assert len(invalid) == 3
    assert not any(secret in line for line in invalid), invalid
