"""The standard gRPC services (health, reflection) behind the same identity checks as the API.

They are registered outside rpc.py's wrapper, so without this a revoked certificate, or one of
another site, would still get answers (and hold Health.Watch streams open). They need no verb:
any authenticated client may ask whether the core is serving and what its API is. A
Health.Watch or reflection stream takes one of the client's open-stream places like any
watch, and is registered with its caller like one: the revocation watchdog ends it when the
caller is revoked or expires (a reflection stream is also re-checked before each answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from trusted.core.auth import Gate, Peer
from trusted.core.errors import CoreError, to_rpc_status
from trusted.core.rpc import stream_slot

__all__ = ["CheckedHealth", "add_reflection"]


async def _authenticate(gate: Gate, context: grpc.aio.ServicerContext, method: str) -> Peer:
    try:
        return gate.authenticate(context, method)
    except CoreError as err:
        await _refuse(gate, context, err, "", method)
        raise AssertionError("unreachable: abort raises") from err


async def _refuse(
    gate: Gate, context: grpc.aio.ServicerContext, err: CoreError, identity: str, method: str
) -> None:
    gate.refused(err, identity, method)
    await context.abort_with_status(to_rpc_status(err))


class CheckedHealth(health.aio.HealthServicer):
    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _authenticate(self.gate, context, "/grpc.health.v1.Health/Check")
        return await super().Check(request, context)

    async def List(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Registered by add_HealthServicer_to_server along with Check and Watch, and not
        # implemented by grpcio's servicer: left alone it answered anyone, revoked certificates
        # included, with an unaudited UNIMPLEMENTED and a traceback in the core's log.
        await _authenticate(self.gate, context, "/grpc.health.v1.Health/List")
        statuses = {
            service: health_pb2.HealthCheckResponse(status=status)
            for service, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        method = "/grpc.health.v1.Health/Watch"
        peer = await _authenticate(self.gate, context, method)
        try:
            with stream_slot(self.gate, peer, method, context) as stream:
                try:
                    return await super().Watch(request, context)
                except asyncio.CancelledError:
                    if stream.ended is None:
                        raise
                    return None  # ended by the revocation watchdog, refusal sent and audited
        except CoreError as err:  # TOO_MANY_STREAMS: only the slot raises CoreError here
            await _refuse(self.gate, context, err, peer.uri, method)
            return None

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)


class _CheckedReflection(ReflectionServicer):
    def __init__(self, service_names: list[str], gate: Gate) -> None:
        super().__init__(service_names)
        self.gate = gate

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        peer = await _authenticate(self.gate, context, method)
        try:
            # A reflection stream is long-lived like a watch: it takes a stream place too.
            with stream_slot(self.gate, peer, method, context) as stream:
                try:
                    async for response in super().ServerReflectionInfo(request_iterator, context):
                        self.gate.recheck(peer, method)
                        yield response
                except asyncio.CancelledError:
                    if stream.ended is None:
                        raise
                    return  # ended by the revocation watchdog, refusal sent and audited
        except CoreError as err:  # TOO_MANY_STREAMS, or refused by the re-check
            # Set, not aborted: an abort raised inside this async generator sometimes reached
            # the client as a bare INTERNAL (seen once in CI) instead of the refusal.
            self.gate.refused(err, peer.uri, method)
            status = to_rpc_status(err)
            context.set_code(status.code)
            context.set_details(status.details)
            context.set_trailing_metadata(status.trailing_metadata)


def add_reflection(server: grpc.aio.Server, service_names: list[str], gate: Gate) -> None:
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        _CheckedReflection(service_names, gate), server
    )
