"""Shared fixtures: a real site and a real core over a Unix socket with mutual TLS."""

from __future__ import annotations

import pytest

from tests.support.site import CoreProcess, Site
from trusted.core.server import Core


@pytest.fixture
def site():
    s = Site()
    yield s
    s.cleanup()


@pytest.fixture
async def core(site: Site):
    """The real core serving `site` in this process (same event loop as the test)."""
    c = Core(site.config())
    await c.start()
    yield c
    await c.stop(grace=0.1)


@pytest.fixture(autouse=True)
def _no_core_left_running():
    """A failed assertion must not leave a core process behind (it would skew later tests).
    Cores of wider-scoped fixtures exist before this runs and are left to their fixture."""
    before = set(map(id, CoreProcess.running))
    yield
    for core in list(CoreProcess.running):
        if id(core) not in before:
            core.kill(9)
