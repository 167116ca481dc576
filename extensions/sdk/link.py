"""The extension's connection to the core, and what to do when the core goes away.

One gRPC channel for the whole process. grpc reconnects the channel by itself; this module only
tracks whether the core is reachable, so that the publisher buffers instead of failing, and runs
the `on_connect` callbacks (declare points, start watches) every time the core is back, since a
restarted core may have lost what it was told before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from smx.client import Stubs, error_reason
from smx.v1 import identity_service_pb2

from .env import ExtensionEnv

__all__ = ["CoreLink", "TRANSIENT"]

log = logging.getLogger(__name__)

# Codes after which retrying later can succeed: the core is away or restarting.
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# Reconnect quickly after a core restart (grpc's defaults back off up to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 3000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


class CoreLink:
    def __init__(self, env: ExtensionEnv, *, backoff_max: float = 5.0) -> None:
        self.env = env
        self.backoff_max = backoff_max
        self.connected = asyncio.Event()
        self.identity = ""
        self.last_error = ""
        self._lost = asyncio.Event()
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self.stubs: Stubs | None = None

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(callback)

    def open(self) -> Stubs:
        self.env.check_certificate()
        channel = self.env.credentials.aio_channel(self.env.target, CHANNEL_OPTIONS)
        self.stubs = Stubs(channel)
        return self.stubs

    def lost(self, err: BaseException | None = None) -> None:
        """A call failed in a way that means the core is not there: buffer and reconnect."""
        if self.connected.is_set():
            log.warning("core connection lost: %s", _describe(err))
        self.connected.clear()
        self._lost.set()

    async def run(self) -> None:
        """Keep the link up for the life of the extension."""
        stubs = self.stubs or self.open()
        delay = 0.2
        while True:
            try:
                me = await stubs.identity.WhoAmI(identity_service_pb2.WhoAmIRequest(), timeout=5)
                self.identity = me.identity
                self._lost.clear()
                for callback in self._on_connect:
                    await callback()
                if self._lost.is_set():  # a callback lost the core again: start over
                    await asyncio.sleep(delay)
                    continue
            except grpc.aio.AioRpcError as err:
                self.last_error = _describe(err)
                reason = error_reason(err)
                if reason in ("CERTIFICATE_REVOKED", "WRONG_SITE", "IDENTITY_INVALID"):
                    # Retrying with the same certificate cannot work: say so loudly, keep trying
                    # slowly in case the operator fixes it (re-issue, policy) without a restart.
                    log.error("the core refuses this certificate: %s", self.last_error)
                    delay = 30.0
                else:
                    log.info(
                        "core not reachable at %s (%s); retrying in %.1f s",
                        self.env.target,
                        self.last_error,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max) if delay < 30 else delay
                continue
            delay = 0.2
            self.last_error = ""
            self.connected.set()
            log.info("connected to the core as %s", self.identity)
            await self._lost.wait()

    async def close(self) -> None:
        if self.stubs is not None:
            await self.stubs.channel.close()


def _describe(err: BaseException | None) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        reason = error_reason(err)
        return f"{err.code().name}{f' [{reason}]' if reason else ''}: {err.details()}"
    return str(err) if err else "unknown"
