"""The edge between gRPC and the core: one wrapper around every RPC handler.

Requests arrive as raw bytes and are parsed here, so that a malformed or oversized request is
answered with INVALID_ARGUMENT (grpc's own deserialiser would answer INTERNAL), the caller is
authenticated before any work is done, and every `CoreError` becomes a status with ErrorInfo in
exactly one place.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from trusted.core.auth import Caller, Gate
from trusted.core.errors import REFUSALS, CoreError, to_rpc_status

__all__ = ["service_handler"]

log = logging.getLogger(__name__)

# Streams (watches) one client may hold open at once: each costs the core work on every write.
MAX_OPEN_STREAMS = 32

Unary = Callable[[Any, Caller, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, Caller, grpc.aio.ServicerContext], AsyncIterator[Any]]


def service_handler(
    service: ServiceDescriptor, impl: object, gate: Gate, max_message_bytes: int
) -> grpc.GenericRpcHandler:
    """A generic handler serving `service` with the methods of `impl` named like its RPCs:
    `async def Rpc(request, caller, context)` (a coroutine, or an async generator for
    server-streaming RPCs)."""
    handlers = {}
    for method in service.methods:
        fn = getattr(impl, method.name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        full = f"/{service.full_name}/{method.name}"
        parse = _parser(request_cls, full, max_message_bytes)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(fn, parse, gate, full),
                response_serializer=response_cls.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(fn, parse, gate, full),
                response_serializer=response_cls.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _parser(cls: Any, method: str, limit: int) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if len(data) > limit:
            raise CoreError(
                "REQUEST_TOO_LARGE",
                f"{method}: request of {len(data)} bytes exceeds the limit of {limit}",
            )
        try:
            return cls.FromString(data)
        except pb_message.DecodeError as err:
            raise CoreError("INVALID_ARGUMENT", f"{method}: malformed request: {err}") from err

    return parse


def _unary(fn: Unary, parse: Callable[[bytes], Any], gate: Gate, method: str) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        caller = None
        try:
            caller = gate.authenticate(context, method)
            return await fn(parse(data), caller, context)
        except CoreError as err:
            await _abort(context, gate, err, caller, method)

    return handle


def _stream(fn: Stream, parse: Callable[[bytes], Any], gate: Gate, method: str) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        stats = caller = None
        try:
            caller = gate.authenticate(context, method)
            if gate.clients[caller.uri].open_streams >= MAX_OPEN_STREAMS:
                raise CoreError(
                    "TOO_MANY_STREAMS",
                    f"{caller.uri} already has {MAX_OPEN_STREAMS} open streams",
                )
            stats = gate.clients[caller.uri]
            stats.open_streams += 1
            async for item in fn(parse(data), caller, context):
                gate.recheck(caller, method)
                yield item
        except CoreError as err:
            await _abort(context, gate, err, caller, method)
        finally:
            if stats is not None:
                stats.open_streams -= 1

    return handle


async def _abort(
    context: grpc.aio.ServicerContext,
    gate: Gate,
    err: CoreError,
    caller: Caller | None,
    method: str,
) -> None:
    if err.reason in REFUSALS:
        gate.refused(err, caller.uri if caller else "", method)
    await context.abort_with_status(to_rpc_status(err))
