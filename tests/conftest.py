"""Shared fixtures: a real site and a real core over a Unix socket with mutual TLS."""

from __future__ import annotations

import pytest

from tests.support.site import Site
from trusted.server import Core


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
