"""AdminService paging as a client sees it: ListAuditRecords oldest first with stable page
tokens, ListClients in pages, and the page size and token rules every List RPC shares."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from smx.client import error_reason
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records

METER = "spiffe://test-site/trusted/meter"


async def refuse_writes(site, count: int, start: int = 0) -> None:
    """`count` denied records for meter, one point each (identical refusals would coalesce)."""
    meter = site.stubs("meter")
    for i in range(start, start + count):
        with pytest.raises(grpc.aio.AioRpcError):
            await meter.points.WritePoints(
                spb.WritePointsRequest(
                    samples=[ppb.PointSample(name=f"ess/X{i}", value=ppb.Value(int_value=1))]
                )
            )


async def reloads(site, count: int) -> list[int]:
    """`count` policy_reload records (denials would be coalesced beyond a budget)."""
    return [
        (await site.stubs("admin").admin.ReloadPolicy(apb.ReloadPolicyRequest())).roles
        for _ in range(count)
    ]


async def test_audit_pages_oldest_first_and_stable_while_the_log_grows(site, core):
    admin = site.stubs("admin").admin
    await reloads(site, 250)
    req = apb.ListAuditRecordsRequest(kind="policy_reload", page_size=100)
    pages = []
    while True:
        resp = await admin.ListAuditRecords(req)
        pages.append([r.seq for r in resp.audit_records])
        if len(pages) == 1:
            await reloads(site, 30)  # new records while the client pages
        if not resp.next_page_token:
            break
        req.page_token = resp.next_page_token
    assert [len(p) for p in pages] == [100, 100, 80]
    # Nothing skipped, nothing twice, oldest first, and the new records come last.
    seqs = [seq for page in pages for seq in page]
    assert seqs == sorted(set(seqs))
    everything = await audit_records(site.stubs("admin"))
    assert [r.seq for r in everything] == list(range(1, len(everything) + 1))
    assert [r.seq for r in everything if r.kind == "policy_reload"] == seqs
    assert all(r.record_time.seconds > 0 for r in everything)


async def test_audit_time_range_and_point_filter(site, core):
    await refuse_writes(site, 3)
    admin = site.stubs("admin")
    everything = await audit_records(admin, kind="denied", identity=METER)
    middle = everything[1].record_time
    after = Timestamp(seconds=middle.seconds, nanos=middle.nanos)
    got = await audit_records(admin, kind="denied", identity=METER, start_time=after)
    # By time, not by position: two refusals may share a record time (the same tick), and
    # then both are at or after it.
    since = (middle.seconds, middle.nanos)
    want = [r.seq for r in everything if (r.record_time.seconds, r.record_time.nanos) >= since]
    assert [r.seq for r in got] == want
    assert want[-2:] == [everything[1].seq, everything[2].seq]  # the middle one and after
    got = await audit_records(admin, point_pattern="ess/X2")
    assert [r.point for r in got] == ["ess/X2"]


async def test_page_tokens_belong_to_their_query(site, core):
    await refuse_writes(site, 5)
    admin = site.stubs("admin").admin
    first = await admin.ListAuditRecords(apb.ListAuditRecordsRequest(kind="denied", page_size=2))
    assert len(first.audit_records) == 2 and first.next_page_token
    for req in (
        # The same token with another filter would page through another result: refused.
        apb.ListAuditRecordsRequest(kind="write", page_token=first.next_page_token),
        apb.ListAuditRecordsRequest(kind="denied", page_token="not-a-token"),
        apb.ListAuditRecordsRequest(page_size=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.ListAuditRecords(req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A token is no use to another List method either.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.ListClients(apb.ListClientsRequest(page_token=first.next_page_token))
    assert error_reason(info.value) == "INVALID_ARGUMENT"
    listing = await site.stubs("gui").points.ListPoints(
        spb.ListPointsRequest(pattern="core/*", page_size=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await site.stubs("gui").points.ListPoints(
            spb.ListPointsRequest(pattern="meter/*", page_token=listing.next_page_token)
        )
    assert error_reason(info.value) == "INVALID_ARGUMENT"


async def test_page_size_above_the_maximum_is_coerced(site, core):
    await refuse_writes(site, 3)
    got = await site.stubs("admin").admin.ListAuditRecords(
        apb.ListAuditRecordsRequest(page_size=1_000_000)
    )
    assert len(got.audit_records) >= 3 and not got.next_page_token
    listed = await site.stubs("gui").points.ListPoints(spb.ListPointsRequest(page_size=5000))
    assert {p.name for p in listed.points} >= {"core/uptime", "core/rss"}


async def test_clients_in_pages(site, core):
    names = ["admin", "meter", "ess", "lessag", "gui", "er", "nobody"]
    for name in names:
        await site.stubs(name).identity.WhoAmI(ipb.WhoAmIRequest())
    admin = site.stubs("admin").admin
    seen, token, pages = [], "", 0
    while True:
        resp = await admin.ListClients(apb.ListClientsRequest(page_size=3, page_token=token))
        seen += resp.clients
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    identities = [c.identity for c in seen]
    assert identities == sorted(identities) and pages == 3
    assert {i.rsplit("/", 1)[1] for i in identities} == set(names)
    for c in seen:
        assert c.calls >= 1 and c.first_seen_time.seconds > 0
        assert (c.first_seen_time.seconds, c.first_seen_time.nanos) <= (
            c.last_seen_time.seconds,
            c.last_seen_time.nanos,
        )
