"""`smx setpoint request --wait`: the real command against a real core and a real owner (an SDK
extension), waiting on the outcome stream; its exit code tells a script whether the device took
the setpoint."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from extensions.sdk import Applied, Clamped, Extension, Rejected
from extensions.sdk.testing import TestSite, smx_command, until

CLIENTS = {
    "battery": ("trusted", ["trusted-extension"], []),
    "ctrl": ("untrusted", ["untrusted-agent"], []),
}


@pytest.fixture(scope="module")
def site():
    with TestSite(CLIENTS) as s:
        yield s


async def smx(site: TestSite, *args: str) -> tuple[int, str, str]:
    # Not subprocess.run: the owner answering the request runs on this event loop.
    proc = await asyncio.create_subprocess_exec(
        *smx_command(),
        "--home",
        str(site.home),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_wait_exits_by_the_outcome(site):
    owner = Extension(site.env("battery"))

    @owner.on_setpoint("battery/P_set", timeout=5.0)
    async def set_power(req):
        await asyncio.sleep(0.5)  # the outcome comes after the request's reply
        if req.value == 1234:
            await asyncio.sleep(60)  # a device that never answers: REJECTED at the timeout
        if req.value > 5000:
            return Clamped(5000.0, "inverter limit")
        if req.value < -9000:
            return Rejected("below the discharge limit")
        return Applied()

    await owner.start()
    request = ("setpoint", "request", "--as", "ctrl", "battery/P_set")
    try:
        await until(lambda: owner.client.list_points("battery/P_set"))  # declared at the core
        code, out, err = await smx(site, *request, "8000", "--wait", "10s")
        assert code == 0, out + err
        assert "battery/P_set = 8000: CLAMPED applied 5000 (inverter limit)" in out

        code, out, err = await smx(site, *request, "-10000", "--wait")
        assert code == 1, out + err
        assert "REJECTED (below the discharge limit)" in out
        assert err.strip() == (
            "smx setpoint: battery/P_set not applied: REJECTED (below the discharge limit)"
        )

        started = time.monotonic()
        code, out, err = await smx(site, *request, "1234", "--wait", "1s")
        assert code == 1 and time.monotonic() - started < 4.5, out + err
        assert "PENDING" in out
        assert err.strip() == (
            "smx setpoint: no outcome within 1s: still PENDING (is the extension that owns "
            "battery/P_set running? `smx status` shows it)"
        )

        code, out, err = await smx(site, *request, "100")  # without --wait: at once, 0
        assert code == 0 and "PENDING" in out, out + err

        code, out, err = await smx(site, *request, "200", "--wait", "5")  # a number: seconds
        assert code == 0 and "APPLIED" in out, out + err
        code, out, err = await smx(site, *request, "200", "--wait", "2d")
        assert code == 2
        assert (
            err.strip()
            == "smx setpoint: --wait: at most 24h, a setpoint's longest validity (got 2d)"
        )

        # Interrupted while waiting: the setpoint stays requested, so its id is said.
        proc = await asyncio.create_subprocess_exec(
            *smx_command(),
            "--home",
            str(site.home),
            *request,
            "1234",
            "--wait",
            "30s",
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        await until(lambda: pending_1234(site), timeout=15)
        proc.send_signal(signal.SIGINT)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 130, err_bytes
        said = re.search(
            r"requested as id (\S+) \(PENDING when the wait ended\)", err_bytes.decode()
        )
        assert said, err_bytes
        code, out, _ = await smx(site, "setpoint", "status", "--as", "ctrl", "--id", said[1])
        assert code == 0 and "battery/P_set = 1234" in out
    finally:
        await owner.stop()


async def pending_1234(site: TestSite) -> bool:
    code, out, _ = await smx(site, "setpoint", "status", "--as", "ctrl", "battery/P_set")
    return code == 0 and "= 1234: PENDING" in out
