"""Whether the GUI has the core, for the pages: the channel must be up and the core must answer
a cheap call (WhoAmI) within a short deadline. A hung core (stopped, deadlocked) keeps its
connection open and sends nothing: without the probe its last values would look current."""

from __future__ import annotations

import asyncio
import logging

from smx.sdk import Client
from smx.v1 import identity_service_pb2

from .hub import Hub

__all__ = ["follow_core"]

log = logging.getLogger("gui")

PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 2.0


async def core_answers(client: Client) -> bool:
    if not client.connected:
        return False
    try:
        await client.stubs.identity.WhoAmI(
            identity_service_pb2.WhoAmIRequest(), timeout=PROBE_TIMEOUT_S
        )
    except Exception:  # noqa: BLE001 - any failure means the same: not answering now
        return False
    return True


async def follow_core(client: Client, hub: Hub) -> None:
    """Marks every value stale while the core does not answer, live again once it does."""
    while True:
        answers = await core_answers(client)
        if answers and not hub.core_connected:
            log.info("the core answers")
        elif hub.core_connected and not answers:
            log.warning("the core does not answer: every value is shown stale")
        hub.set_core_connected(answers)
        await asyncio.sleep(PROBE_EVERY_S)
