"""The link to the REMOTE core: an SDK client of its own, with the remote site's CA and the
client certificate the remote operator issued to this link (the extension's own client is the
local core's).

The client reconnects by itself; whether the remote counts as up is decided by the mirror's
watch, which sets `up`.
"""

from __future__ import annotations

import asyncio

from smx.client import Credentials, Stubs
from smx.sdk import Client

__all__ = ["RemoteLink"]


class RemoteLink:
    def __init__(self, target: str, credentials: Credentials) -> None:
        self.target = target
        self.credentials = credentials
        self.client = Client(target, credentials)
        self.up = asyncio.Event()
        self.identity = ""  # our identity as the remote core sees it (WhoAmI)
        self.last_error = ""

    @property
    def stubs(self) -> Stubs:
        return self.client.stubs

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()
