"""The GUI agent: its settings, one watch of the site's points into the hub, and the web
server. Rights: read only (the `gui` role, or `role = "none"` with `reads`); it requests and
writes nothing but its own health point where the policy lets it."""

from __future__ import annotations

import asyncio
import logging

from smx.sdk import Agent

from .connections import limit_open_files
from .history import day_of
from .hub import Hub
from .server import GuiServer
from .settings import GuiConfig

__all__ = ["setup"]

CORE_CHECK_S = 1.0


def setup(agent: Agent) -> None:
    # One line per connection would wear an SD card out: only websockets' problems are logged.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    limit_open_files()
    cfg = agent.settings(GuiConfig)
    cfg.check(agent.config_key)
    hub = Hub(cfg.overview, cfg.max_clients)
    agent.subscribe(cfg.points, hub.update)
    server = GuiServer(cfg, hub, lambda name: day_of(agent.client, name), agent.env.site)
    agent.background(server.run, "web")

    async def follow_core() -> None:
        # The pages show every value as stale while the GUI has lost the core.
        while True:
            hub.set_core_connected(agent.client.connected)
            await asyncio.sleep(CORE_CHECK_S)

    agent.background(follow_core, "core-state")
