"""The failed-login bound: per address and for the whole GUI, on a clock the test moves, and
against a real GUI process with logins from two loopback addresses."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from extensions.sdk.testing import TestSite
from tests.untrusted.gui.conftest import PASSWORD, PASSWORD_HASH, GuiProcess, gui_process
from untrusted.gui.addresses import address_key
from untrusted.gui.failed_logins import FailedLogins


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_address_has_its_own_budget_a_minute():
    clock = Clock()
    failed = FailedLogins(per_address=3, total=100, clock=clock)
    for _ in range(3):
        assert failed.wait_s("192.0.2.1") == 0.0
        failed.failed("192.0.2.1")
        clock.now += 1.0
    assert failed.wait_s("192.0.2.1") == 57.0  # the first failure leaves the window at 60 s
    assert failed.wait_s("192.0.2.2") == 0.0  # the owner, elsewhere, is not locked out
    clock.now = 60.5
    assert failed.wait_s("192.0.2.1") == 0.0


def test_the_whole_gui_has_a_higher_ceiling():
    clock = Clock()
    failed = FailedLogins(per_address=2, total=4, clock=clock)
    for n in range(4):
        failed.failed(f"192.0.2.{n}")
    assert failed.wait_s("192.0.2.99") == 60.0


def test_an_ipv6_host_is_one_address_per_64():
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


async def log_in_from(gui: GuiProcess, source: str, password: str) -> dict:
    async with connect(f"ws://{gui.host}/ws/login", origin=gui.url, local_addr=(source, 0)) as ws:
        await ws.send(json.dumps({"password": password}))
        return json.loads(await ws.recv())


async def test_a_guesser_at_one_address_does_not_lock_out_another(site: TestSite):
    with gui_process(site, password_hash=PASSWORD_HASH, max_failed_logins=2) as gui:
        for _ in range(3):
            await log_in_from(gui, "127.0.0.2", "guess")
        locked = await log_in_from(gui, "127.0.0.2", PASSWORD)
        assert "too many failed logins" in locked["error"]
        assert "ticket" in await log_in_from(gui, "127.0.0.1", PASSWORD)
