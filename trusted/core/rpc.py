"""The edge between gRPC and the core: one wrapper around every RPC handler.

Requests arrive as raw bytes and are parsed here, so that a malformed or oversized request is
answered with INVALID_ARGUMENT (grpc's own deserialiser would answer INTERNAL). Before any
handler runs, the caller is authenticated and authorized against the one table of method
verbs (`trusted.policy.METHOD_VERBS`): a method without an entry is refused to everyone, so a
new RPC cannot be served unchecked by forgetting a line in its handler. Every `CoreError`
becomes a status with ErrorInfo in exactly one place, and every refusal is audited there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from trusted.core.auth import Caller, Gate, Peer
from trusted.core.errors import REFUSALS, CoreError, to_rpc_status
from trusted.core.stream_registry import OpenStream
from trusted.policy import METHOD_VERBS, NO_VERB

__all__ = ["MAX_OPEN_STREAMS", "service_handler", "stream_slot"]

log = logging.getLogger(__name__)

# Streams (watches, write streams) one client may hold open at once: each costs the core work on
# every write, or memory and a task while open.
MAX_OPEN_STREAMS = 32

Unary = Callable[[Any, Caller, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, Caller, grpc.aio.ServicerContext], AsyncGenerator[Any, None]]


def service_handler(
    service: ServiceDescriptor,
    impl: object,
    gate: Gate,
    max_message_bytes: int,
    verbs: Mapping[str, str] = METHOD_VERBS,
) -> grpc.GenericRpcHandler:
    """A generic handler serving `service` with the methods of `impl` named like its RPCs:
    `async def Rpc(request, caller, context)` (a coroutine, or an async generator for
    server-streaming RPCs; for a bidirectional RPC a coroutine that answers one request, called
    for each request of the stream in turn). `verbs` maps full method names to the verb each
    needs."""
    handlers = {}
    for method in service.methods:
        full = f"/{service.full_name}/{method.name}"
        verb = verbs.get(full)
        if verb is None:
            # Served, but refused to everyone: a missing entry must be visible to clients (and
            # in the audit log), not a silent UNIMPLEMENTED or, worse, an unchecked method.
            log.error("%s has no entry in the method verb table: every call is refused", full)
        fn = getattr(impl, method.name, None)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        parse = _parser(request_cls, full, max_message_bytes)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _each(fn, parse, gate, full, verb),
                response_serializer=response_cls.SerializeToString,
            )
        elif method.client_streaming:
            raise TypeError(f"{full}: client-streaming RPCs are not served by this edge")
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(fn, parse, gate, full, verb),
                response_serializer=_serializer(response_cls),
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(fn, parse, gate, full, verb),
                response_serializer=response_cls.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


@contextlib.contextmanager
def stream_slot(
    gate: Gate,
    peer: Peer,
    method: str,
    context: grpc.aio.ServicerContext,
    verb: str = NO_VERB,
) -> Iterator[OpenStream]:
    """Hold one of the client's MAX_OPEN_STREAMS places for the life of a stream; every
    long-lived stream the core serves (watches, write streams, Health.Watch, reflection) takes
    one. The stream is registered with its caller, so the revocation watchdog
    (trusted.core.stream_registry) ends it when the caller is revoked or expires, or a reload
    takes `verb` from it, even while it sends nothing."""
    stats = gate.clients[peer.uri]
    if stats.open_streams >= MAX_OPEN_STREAMS:
        raise CoreError(
            "TOO_MANY_STREAMS", f"{peer.uri} already has {MAX_OPEN_STREAMS} open streams"
        )
    stream = OpenStream(peer, method, context, asyncio.current_task(), verb=verb)
    stats.open_streams += 1
    gate.streams.add(gate, stream)
    try:
        yield stream
    finally:
        gate.streams.discard(stream)
        stats.open_streams -= 1


def _serializer(cls: Any) -> Callable[[Any], bytes]:
    """A stream's messages: a message of `cls`, or one already serialized (WatchPoints builds
    its messages as bytes, trusted.core.watch_wire)."""
    serialize = cls.SerializeToString

    def serialize_or_pass(message: Any) -> bytes:
        return message if type(message) is bytes else serialize(message)

    return serialize_or_pass


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


def _unary(
    fn: Unary | None, parse: Callable[[bytes], Any], gate: Gate, method: str, verb: str | None
) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        caller = None
        try:
            caller = gate.admit(context, method, verb)
            if fn is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served yet")
                return None
            return await fn(parse(data), caller, context)
        except CoreError as err:
            await _abort(context, gate, err, caller, method)

    return handle


def _stream(
    fn: Stream | None, parse: Callable[[bytes], Any], gate: Gate, method: str, verb: str | None
) -> Callable:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        caller = None
        try:
            caller = gate.admit(context, method, verb)
            if fn is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served yet")
                return
            with stream_slot(gate, caller.peer, method, context, caller.verb) as stream:
                try:
                    # aclosing: the handler's own clean-up (unwatch) runs when the stream ends,
                    # not whenever the garbage collector gets to it.
                    async with contextlib.aclosing(fn(parse(data), caller, context)) as items:
                        async for item in items:
                            gate.recheck(caller.peer, method)
                            yield item
                except asyncio.CancelledError:
                    if stream.ended is None:
                        raise
                    # Ended by the revocation watchdog: status sent and audited already.
                    return
        except CoreError as err:
            await _abort(context, gate, err, caller, method)

    return handle


def _each(
    fn: Unary | None, parse: Callable[[bytes], Any], gate: Gate, method: str, verb: str | None
) -> Callable:
    """A bidirectional stream of calls: each request is admitted, handled and answered as a
    unary call of its own, in order; the first refusal ends the stream with its status."""

    async def handle(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        caller = None
        try:
            caller = gate.admit(context, method, verb)
            if fn is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served yet")
                return
            with stream_slot(gate, caller.peer, method, context, caller.verb) as stream:
                try:
                    async for data in requests:
                        # Checked as a call: revocation, expiry, the verb in the policy in force.
                        gate.readmit(caller)
                        yield await fn(parse(data), caller, context)
                except asyncio.CancelledError:
                    if stream.ended is None:
                        raise
                    return  # ended by the revocation watchdog: status sent and audited
        except CoreError as err:
            await _abort(context, gate, err, caller, method)

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
