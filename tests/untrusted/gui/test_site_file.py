"""The GUI as a site runs it: `[agents.gui]` in site.toml under `smx run`, with the `gui` role,
serving the site's points to a page."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from extensions.sdk.testing import free_port, until, wait_for
from tests.support.smx_run import SmxRun, quick_site


async def test_an_agents_gui_entry_runs_the_gui_with_read_rights():
    port = free_port()
    site = SmxRun(
        quick_site("usm-gui")
        + f"""
[agents.gui]
module = "untrusted.gui"
role = "gui"
[agents.gui.config]
listen = "127.0.0.1:{port}"
"""
    )
    try:
        wait_for(
            lambda: site.procs().get("gui", {}).get("health") == "running",
            what=f"the GUI running: {site.procs().get('gui')} {site.log()[-2000:]}",
        )

        async def core_points() -> dict:
            async with connect(
                f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}"
            ) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                message = json.loads(await ws.recv())
                return {p["name"]: p for p in message["points"]}

        points = await until(core_points, what="the core's points on the GUI's WebSocket")
        assert points["core/uptime"]["unit"] == "s"
    finally:
        site.close()
