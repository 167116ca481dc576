"""The GUI agent: its settings, one watch of the site's points into the hub, and the web
server. Rights: read only (the `gui` role, or `role = "none"` with `reads`); it requests and
writes nothing but its own health point where the policy lets it."""

from __future__ import annotations

import logging

from smx.sdk import Agent

from .connections import limit_open_files
from .core_state import follow_core
from .history import day_of
from .hub import Hub
from .server import GuiServer
from .settings import GuiConfig

__all__ = ["setup"]


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

    # The pages show every value as stale while the GUI has lost the core (or it hangs).
    agent.background(lambda: follow_core(agent.client, hub), "core-state")
