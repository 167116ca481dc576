"""The supervisor gives the heap its status rounds freed back to the system (smx/heap.py):
without it a production site's supervisor grew ~2.4 MiB PSS in 5 minutes (docs/PERFORMANCE.md,
run 14), which a malloc_trim gave back, and up and down by 3 MiB with Python's full collections
(run 15): every 10 s it collects its cycles, then trims."""

from __future__ import annotations

import asyncio

from trusted.supervisor import runner
from trusted.supervisor.site_config import load_site_config


async def test_the_supervisor_trims_its_heap_every_trim_interval(tmp_path, monkeypatch):
    (tmp_path / "site.toml").write_text('site = "heap-site"\n')
    trims: list[float] = []
    collections: list[int] = []
    monkeypatch.setattr(runner, "memory_trimmer", lambda: lambda: trims.append(1.0))
    monkeypatch.setattr(runner.gc, "collect", lambda: collections.append(1) or 0)
    monkeypatch.setattr(runner, "TRIM_INTERVAL_S", 0.2)
    sup = runner.Supervisor(load_site_config(tmp_path / "site.toml"), status_interval=0.05)

    async def nothing() -> None:
        pass

    monkeypatch.setattr(sup, "_refresh_health", nothing)
    monkeypatch.setattr(sup, "_sweep_strays", lambda: None)
    monkeypatch.setattr(sup, "_write_status", lambda: None)
    loop = asyncio.create_task(sup._refresh_loop())
    await asyncio.sleep(0.1)
    assert trims == [], "not before TRIM_INTERVAL_S"
    await asyncio.sleep(1.0)
    loop.cancel()
    assert 3 <= len(trims) <= 5, trims  # once per 0.2 s, on the loop's 0.05 s rounds
    assert len(collections) == len(trims)  # the cycles first: what they free is trimmed too
