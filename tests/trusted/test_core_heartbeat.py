"""The core's health file (smx.health): written under the supervisor, rewritten from its event
loop, none for a core started by hand."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from smx.health import read_health_file
from tests.support.site import CoreProcess, Site
from trusted.core import server
from trusted.core.server import run_core


async def test_the_core_says_starting_running_and_stopping(site: Site, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "WRITE_PERIOD_S", 0.05)
    path = tmp_path / "core.health.json"
    seen: list[tuple[str, float]] = []

    def ready(_core: server.Core) -> None:
        rep = read_health_file(path)
        assert rep is not None
        seen.append((rep.state, rep.ts))

        async def later() -> None:
            await asyncio.sleep(0.3)  # several heartbeats
            rep = read_health_file(path)
            assert rep is not None
            seen.append((rep.state, rep.ts))
            os.kill(os.getpid(), signal.SIGTERM)  # run_core's own handler stops it

        asyncio.get_running_loop().create_task(later())

    await run_core(site.config(), on_ready=ready, health_file=path)
    assert [s for s, _ in seen] == ["running", "running"]
    assert seen[1][1] > seen[0][1]  # rewritten from the loop while nothing changed
    last = read_health_file(path)
    assert last is not None and last.state == "stopping"


async def test_a_core_that_cannot_start_says_failed(site: Site, tmp_path):
    path = tmp_path / "core.health.json"
    (site.home / "policy.toml").write_text("this is not a policy")
    try:
        await run_core(site.config(), health_file=path)
    except Exception:
        pass
    else:
        raise AssertionError("the core started with a broken policy")
    rep = read_health_file(path)
    assert rep is not None and rep.state == "failed" and rep.last_error


def test_a_core_started_by_hand_keeps_no_heartbeat(site: Site):
    core = CoreProcess(site)
    try:
        files = [p for p in Path(site.home).rglob("*") if "health" in p.name]
        assert files == []
    finally:
        core.kill(signal.SIGTERM)
    assert not any("health" in p.name for p in Path(site.home).rglob("*"))
