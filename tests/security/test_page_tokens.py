"""Page tokens are sealed: where a ListPoints scan stopped may be a name the caller may not read
(its page was empty because every name examined was refused), so the token must not show it,
and a client must not be able to make one that starts the scan where it likes."""

from __future__ import annotations

import base64

import grpc
import pytest

from smx.client import error_reason
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from tests.support.site import Site
from trusted.core.server import Core

SECRETS = [f"smm/Ap.bill{i:04d}" for i in range(1500)]  # the agent may not read **/*.bill*


def _write(names: list[str]) -> pb.WritePointsRequest:
    return pb.WritePointsRequest(
        samples=[ppb.PointSample(name=n, value=ppb.Value(double_value=1.0)) for n in names]
    )


async def _refused(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return error_reason(info.value)


async def test_a_token_shows_no_unreadable_name_and_cannot_be_forged_or_shared(
    site: Site, core: Core
) -> None:
    admin, agent, gui = site.stubs("admin"), site.stubs("lessag"), site.stubs("gui")
    await admin.points.WritePoints(_write(SECRETS))
    await admin.points.WritePoints(_write(["smm/P"]))

    # The agent pages through smm/*: it sees smm/P only, however many pages it takes.
    seen, token, pages = [], "", 0
    while True:
        r = await agent.points.ListPoints(
            pb.ListPointsRequest(pattern="smm/*", page_size=1, page_token=token)
        )
        seen += [p.name for p in r.points]
        pages += 1
        token = r.next_page_token
        if not token:
            break
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert b"bill" not in raw and b"smm/" not in raw  # nothing of a name shows
        assert pages < 10
    assert seen == ["smm/P"]

    # A token made by hand in the old readable form, or with a chosen position, is refused.
    forged = base64.urlsafe_b64encode(b'["0123456789abcdef","smm/Ap.bill0999"]').decode()
    for bad in (forged, forged.rstrip("="), "AAAAAAAAAAAAAAAAAAAAAAAA"):
        assert (
            await _refused(
                agent.points.ListPoints(pb.ListPointsRequest(pattern="smm/*", page_token=bad))
            )
            == "INVALID_ARGUMENT"
        )

    # Another client's token is refused too, even for the same query.
    first = await admin.points.ListPoints(pb.ListPointsRequest(pattern="smm/*", page_size=1))
    assert first.next_page_token
    assert (
        await _refused(
            gui.points.ListPoints(
                pb.ListPointsRequest(pattern="smm/*", page_size=1, page_token=first.next_page_token)
            )
        )
        == "INVALID_ARGUMENT"
    )
    # ... while its owner pages on with it.
    more = await admin.points.ListPoints(
        pb.ListPointsRequest(pattern="smm/*", page_size=1, page_token=first.next_page_token)
    )
    assert [p.name for p in more.points] == [SECRETS[1]]
