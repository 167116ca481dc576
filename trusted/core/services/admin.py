"""AdminService: audit records, policy reload, clients. The edge admits only admins."""

from __future__ import annotations

import asyncio
import json

from smx.timestamps import ms_to_ts, ts_to_ms
from smx.v1 import admin_service_pb2 as pb
from trusted.core.audit_reader import page_records
from trusted.core.audit_record import AuditRecord
from trusted.core.auth import Caller
from trusted.core.paging import make_token, page_size, read_token
from trusted.core.services.fields import globs
from trusted.core.state import CoreState

__all__ = ["AdminService"]


class AdminService:
    def __init__(self, state: CoreState) -> None:
        self.s = state

    async def ListAuditRecords(self, req: pb.ListAuditRecordsRequest, caller: Caller, ctx: object):
        size = page_size(req.page_size)
        start = ts_to_ms(req.start_time) if req.HasField("start_time") else None
        end = ts_to_ms(req.end_time) if req.HasField("end_time") else None
        query = (
            "ListAuditRecords",
            start,
            end,
            req.kind,
            req.identity,
            req.point_pattern,
            caller.uri,
        )
        after = int(read_token(req.page_token, query, int)) if req.page_token else 0
        glob = globs([req.point_pattern]) if req.point_pattern else None
        # The audit file can be large: read it off the event loop. The token is the last seq
        # returned: records appended meanwhile come later, so pages never shift.
        records, more = await asyncio.to_thread(
            page_records,
            self.s.audit.path,
            after_seq=after,
            start_ms=start,
            end_ms=end,
            kind=req.kind or None,
            identity=req.identity or None,
            point_glob=glob.match if glob else None,
            limit=size,
        )
        return pb.ListAuditRecordsResponse(
            audit_records=[_record(r) for r in records],
            next_page_token=make_token(query, records[-1].seq) if more else "",
        )

    async def ReloadPolicy(self, req: pb.ReloadPolicyRequest, caller: Caller, ctx: object):
        policy = self.s.reload_policy(caller.uri)
        return pb.ReloadPolicyResponse(roles=policy.roles_count, bindings=policy.bindings_count)

    async def ListClients(self, req: pb.ListClientsRequest, caller: Caller, ctx: object):
        size = page_size(req.page_size)
        query = ("ListClients", caller.uri)
        after = str(read_token(req.page_token, query, str)) if req.page_token else ""
        rest = sorted(
            ((uri, st) for uri, st in self.s.gate.clients.items() if uri > after),
            key=lambda item: item[0],
        )
        page = rest[:size]
        return pb.ListClientsResponse(
            clients=[
                pb.Client(
                    identity=uri,
                    first_seen_time=ms_to_ts(int(st.first_seen * 1000)),
                    last_seen_time=ms_to_ts(int(st.last_seen * 1000)),
                    calls=st.calls,
                    open_streams=st.open_streams,
                )
                for uri, st in page
            ],
            next_page_token=make_token(query, page[-1][0]) if len(rest) > size else "",
        )


def _record(r: AuditRecord) -> pb.AuditRecord:
    return pb.AuditRecord(
        seq=r.seq,
        record_time=ms_to_ts(r.ts_ms),
        kind=r.kind,
        identity=r.identity,
        method=r.method,
        point=r.point,
        reason=r.reason,
        detail=json.dumps(r.detail, sort_keys=True),
    )
