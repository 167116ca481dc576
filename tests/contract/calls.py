"""Calling the API as a refused client does: the status code and ErrorInfo reason of a call or
of a stream's first message."""

from __future__ import annotations

import grpc
import pytest

from smx.client import error_reason


async def refusal(call) -> grpc.aio.AioRpcError:
    """The error a unary call (awaited) or a stream (first message read) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if hasattr(call, "read"):
            await call.read()
        else:
            await call
    return info.value


async def refused(call) -> tuple[grpc.StatusCode, str | None]:
    err = await refusal(call)
    return err.code(), error_reason(err)
