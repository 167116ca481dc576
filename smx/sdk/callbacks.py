"""Calling an author's callback from one of the SDK's streams: a plain function or a coroutine
function, and an exception in it is logged, never the end of the stream that called it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["call_back"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def call_back(callback: Callable[[T], Awaitable[None] | None], arg: T, what: str) -> None:
    try:
        result = callback(arg)
        if asyncio.iscoroutine(result):
            await result
    except Exception:
        log.exception("%s: callback %s failed", what, getattr(callback, "__name__", callback))
