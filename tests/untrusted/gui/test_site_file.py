"""The GUI as a site runs it: `[agents.gui]` in site.toml under `smx run`, with the `gui` role,
serving the site's points to a page."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from extensions.sdk.testing import free_port, until, wait_for
from tests.support.smx_run import SmxRun, quick_site


async def page_points(port: int) -> dict:
    async with connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        message = json.loads(await ws.recv())
        return {p["name"]: p for p in message["points"]}


def gui_site(role_lines: str, port: int) -> SmxRun:
    return SmxRun(
        quick_site("usm-gui")
        + f"""
[agents.gui]
module = "untrusted.gui"
{role_lines}
[agents.gui.config]
listen = "127.0.0.1:{port}"
"""
    )


def running(site: SmxRun) -> None:
    wait_for(
        lambda: site.procs().get("gui", {}).get("health") == "running",
        what=f"the GUI running: {site.procs().get('gui')} {site.log()[-2000:]}",
    )


async def test_an_agents_gui_entry_runs_the_gui_with_the_gui_role():
    port = free_port()
    site = gui_site('role = "gui"', port)
    try:
        running(site)
        points = await until(lambda: page_points(port), what="the core's points on the page")
        assert points["core/uptime"]["unit"] == "s"
        assert "core/watchers" in points  # the role reads everything
    finally:
        site.close()


async def test_with_no_role_it_shows_only_what_reads_grants():
    port = free_port()
    site = gui_site('role = "none"\nreads = ["core/uptime"]', port)
    try:
        running(site)

        async def uptime_shown() -> dict:
            points = await page_points(port)
            return points if "core/uptime" in points else {}

        points = await until(uptime_shown, what="core/uptime on the page")
        assert "core/watchers" not in points
    finally:
        site.close()
