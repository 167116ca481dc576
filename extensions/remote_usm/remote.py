"""The link to the REMOTE core: our own grpc.aio channel with the remote site's CA and the
client certificate the remote operator issued to this link (the SDK's CoreLink is the local one).

grpc reconnects the channel by itself (with the SDK's short back-off options); whether the remote
is reachable is decided by the mirror's watch, which sets `up`.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from extensions.sdk.link import CHANNEL_OPTIONS
from smx.client import Credentials, Stubs, error_reason

__all__ = ["RemoteLink", "describe"]

log = logging.getLogger(__name__)


class RemoteLink:
    def __init__(self, target: str, credentials: Credentials) -> None:
        self.target = target
        self.credentials = credentials
        self.up = asyncio.Event()
        self.identity = ""  # our identity as the remote core sees it (WhoAmI)
        self.last_error = ""
        self.stubs: Stubs | None = None

    def open(self) -> Stubs:
        """A channel to the remote core; FileNotFoundError names a missing certificate file."""
        if self.stubs is None:
            channel = self.credentials.aio_channel(self.target, CHANNEL_OPTIONS)
            self.stubs = Stubs(channel)
        return self.stubs

    async def close(self) -> None:
        if self.stubs is not None:
            await self.stubs.channel.close()
            self.stubs = None


def describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        reason = error_reason(err)
        return f"{err.code().name}{f' [{reason}]' if reason else ''}: {err.details()}"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
