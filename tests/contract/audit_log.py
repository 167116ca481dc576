"""Reading the audit log as a client does: every page of ListAuditRecords."""

from __future__ import annotations

from smx.client import Stubs
from smx.v1 import admin_service_pb2 as apb


async def audit_records(stubs: Stubs, **filters: str) -> list[apb.AuditRecord]:
    """Every record matching `filters` (fields of ListAuditRecordsRequest), oldest first."""
    req = apb.ListAuditRecordsRequest(page_size=1000, **filters)
    found: list[apb.AuditRecord] = []
    while True:
        resp = await stubs.admin.ListAuditRecords(req)
        found += resp.audit_records
        if not resp.next_page_token:
            return found
        req.page_token = resp.next_page_token
