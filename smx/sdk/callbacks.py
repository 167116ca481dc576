"""Calling an author's callback from one of the SDK's streams: a plain function or a coroutine
function, and an exception in it is logged, never the end of the stream that called it. A call
to the core that failed inside it (a refused setpoint request, say) is one line saying why; any
other exception is logged with its traceback, which is what its author needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from smx.client import describe_error

__all__ = ["call_back"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def call_back(callback: Callable[[T], Awaitable[None] | None], arg: T, what: str) -> None:
    try:
        result = callback(arg)
        if asyncio.iscoroutine(result):
            await result
    except grpc.aio.AioRpcError as err:
        name = getattr(callback, "__name__", callback)
        log.error("%s: callback %s: a call to the core failed: %s", what, name, describe_error(err))
    except Exception:
        log.exception("%s: callback %s failed", what, getattr(callback, "__name__", callback))
