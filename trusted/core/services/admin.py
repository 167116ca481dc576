"""AdminService: audit queries, policy reload, connected clients. Needs the admin right."""

from __future__ import annotations

import asyncio
import json

from smx.timestamps import ms_to_ts, ts_to_ms
from smx.v1 import admin_service_pb2 as pb
from trusted.core.auth import Caller
from trusted.core.errors import CoreError
from trusted.core.services.points import _globs
from trusted.core.state import CoreState

__all__ = ["AdminService"]

SERVICE = "/smx.v1.AdminService/"


class AdminService:
    def __init__(self, state: CoreState) -> None:
        self.s = state

    async def QueryAudit(self, req: pb.QueryAuditRequest, caller: Caller, ctx: object):
        self.s.gate.check(caller, "admin", SERVICE + "QueryAudit")
        if not 0 <= req.limit <= 10_000:
            raise CoreError("INVALID_ARGUMENT", "limit must be in 0..10000")
        glob = _globs([req.point_pattern]) if req.point_pattern else None
        # The audit file can be large: read it off the event loop.
        records = await asyncio.to_thread(
            self.s.audit.query,
            start_ms=ts_to_ms(req.start_time) if req.HasField("start_time") else None,
            end_ms=ts_to_ms(req.end_time) if req.HasField("end_time") else None,
            kind=req.kind or None,
            identity=req.identity or None,
            point_glob=glob.match if glob else None,
            limit=req.limit or 1000,
        )
        return pb.QueryAuditResponse(
            records=[
                pb.AuditRecord(
                    seq=r.seq,
                    time=ms_to_ts(r.ts_ms),
                    kind=r.kind,
                    identity=r.identity,
                    method=r.method,
                    point=r.point,
                    reason=r.reason,
                    detail=json.dumps(r.detail, sort_keys=True),
                )
                for r in records
            ]
        )

    async def ReloadPolicy(self, req: pb.ReloadPolicyRequest, caller: Caller, ctx: object):
        self.s.gate.check(caller, "admin", SERVICE + "ReloadPolicy")
        policy = self.s.reload_policy(caller.uri)
        return pb.ReloadPolicyResponse(roles=policy.roles_count, bindings=policy.bindings_count)

    async def ListClients(self, req: pb.ListClientsRequest, caller: Caller, ctx: object):
        self.s.gate.check(caller, "admin", SERVICE + "ListClients")
        return pb.ListClientsResponse(
            clients=[
                pb.Client(
                    identity=uri,
                    first_seen=ms_to_ts(int(st.first_seen * 1000)),
                    last_seen=ms_to_ts(int(st.last_seen * 1000)),
                    calls=st.calls,
                    open_streams=st.open_streams,
                )
                for uri, st in sorted(self.s.gate.clients.items())
            ]
        )
