"""A core that hangs (SIGSTOP: its connection stays open, it answers nothing) is shown as lost,
every value stale, and live again once it continues (SIGCONT): a real core and the GUI as their
own processes, a page over a real WebSocket."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from extensions.sdk.testing import TestSite
from tests.untrusted.gui.conftest import gui_process, write


async def until_core_is(ws: ClientConnection, connected: bool, timeout: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") == "points" and message["core"] is connected:
                return message


async def test_a_hung_core_is_shown_as_lost_and_a_continued_one_as_live():
    with TestSite(
        {"smm": ("trusted", ["trusted-extension"], []), "gui": ("untrusted", ["gui"], [])}
    ) as own_site:
        await write(own_site, "smm", {"smm/P": 1000.0})
        core = own_site.core
        assert core is not None
        with gui_process(own_site) as gui:
            async with connect(f"ws://{gui.host}/ws", origin=gui.url) as ws:
                await until_core_is(ws, True, timeout=15)
                core.send_signal(signal.SIGSTOP)
                try:
                    await until_core_is(ws, False, timeout=10)
                finally:
                    core.send_signal(signal.SIGCONT)
                await until_core_is(ws, True, timeout=15)
            assert "the core does not answer" in gui.output()
