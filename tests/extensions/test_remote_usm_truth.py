"""remote_usm's setpoint outcomes never lie when the link misbehaves, through a TCP relay under the
test's control between two REAL cores: a lost answer is UNCONFIRMED, then the remote's real
outcome, applied once; a slow remote owner; this extension restarted during an outage. (The
link's own health: test_remote_usm_link.py.)"""

from __future__ import annotations

import asyncio

import pytest

from extensions.remote_usm import RemoteUsm
from extensions.sdk import Applied, Extension, SetpointState
from extensions.sdk.testing import TestSite, point_where, until
from smx.v1 import control_service_pb2 as cpb
from tests.extensions.test_remote_usm import Sub, remote_requests, request, value
from tests.extensions.test_remote_usm import sites as sites  # the two-core fixture
from tests.extensions.test_remote_usm_link import FORWARD_TIMEOUT, usm_config, via_relay


async def status_of(local: TestSite, sid: str) -> cpb.Setpoint:
    resp = await local.stubs("ctrl").control.GetSetpoint(cpb.GetSetpointRequest(id=sid))
    return resp.setpoint


async def reaches(local: TestSite, sid: str, status: int, timeout: float = 20) -> cpb.Setpoint:
    async def probe():
        sp = await status_of(local, sid)
        return sp if sp.status == status else None

    return await until(probe, timeout=timeout)


def statuses(changes: list[SetpointState], sid: str) -> list[str]:
    return [c.status for c in changes if c.id == sid]


@pytest.mark.parametrize("cut", ["blackhole", "reset"])
async def test_a_lost_answer_is_unconfirmed_then_the_remote_truth(sites, cut):
    remote, local, port = sites
    sub = Sub(remote)
    await sub.start()
    sub.ext.publish("ess/P", 0.0)
    relay, usm = await via_relay(remote, local, port)
    ctrl = local.client("ctrl")
    changes: list[SetpointState] = []
    ctrl.on_outcome(changes.append)
    await ctrl.start()
    try:
        await point_where(local, "usm1/link.up", lambda p: value(p) is True)
        sub.before_answer = getattr(relay, cut)  # the link breaks as the remote applies it
        sp = await until(lambda: request_as(ctrl, 1000.0))
        held = await reaches(local, sp.id, cpb.SETPOINT_STATUS_UNCONFIRMED)
        assert "outcome to be confirmed" in held.reason
        await asyncio.sleep(2 * FORWARD_TIMEOUT)  # the outage lasts 2x forward_timeout
        assert (await status_of(local, sp.id)).status == cpb.SETPOINT_STATUS_UNCONFIRMED

        relay.restore()
        done = await reaches(local, sp.id, cpb.SETPOINT_STATUS_APPLIED)
        remote_id = usm.forwarder.forwarded.get(sp.id)
        on_remote = (
            await remote.stubs("admin").control.GetSetpoint(cpb.GetSetpointRequest(id=remote_id))
        ).setpoint
        assert on_remote.status == done.status == cpb.SETPOINT_STATUS_APPLIED
        assert done.applied_value == on_remote.applied_value
        # Applied once on the remote; the requester's stream showed the correction.
        assert list(sub.seen.values()) == [1000.0] and remote_requests(remote) == 1
        await until(lambda: statuses(changes, sp.id)[-1:] == ["APPLIED"] or None)
        # (PENDING may or may not come on the stream: the request's reply already said it)
        seen = [s for s in statuses(changes, sp.id) if s != "PENDING"]
        assert sp.status == "PENDING" and seen == ["UNCONFIRMED", "APPLIED"]
    finally:
        await ctrl.close()
        await usm.stop()
        await sub.stop()
        await relay.close()


async def request_as(ctrl, val: float):
    try:
        return await ctrl.request_setpoint("usm1/ess/P_set", val, 60)
    except Exception:
        return None  # not mirrored (declared) yet


async def test_a_slow_remote_owner_is_unconfirmed_then_applied(sites):
    remote, local, port = sites
    sub = Sub(remote)

    @sub.ext.on_setpoint("ess/SoC_min_set", timeout=30)
    async def slow(req):
        await asyncio.sleep(FORWARD_TIMEOUT + 2)
        return Applied()

    await sub.start()
    relay, usm = await via_relay(remote, local, port)
    try:
        sp = await until(
            lambda: request_or_none_named(local, "usm1/ess/SoC_min_set", 20.0), timeout=20
        )
        held = await reaches(local, sp.id, cpb.SETPOINT_STATUS_UNCONFIRMED)
        assert "has not reported within" in held.reason
        done = await reaches(local, sp.id, cpb.SETPOINT_STATUS_APPLIED)
        assert done.applied_value.double_value == 20.0
    finally:
        await usm.stop()
        await sub.stop()
        await relay.close()


async def request_or_none_named(local: TestSite, name: str, val: float):
    try:
        return await request(local, name, val)
    except Exception:
        return None


async def test_this_extension_restarted_during_an_outage_keeps_the_truth(sites):
    remote, local, port = sites
    sub = Sub(remote)
    await sub.start()
    relay, usm = await via_relay(remote, local, port)
    try:
        sp = await until(lambda: request_or_none_named(local, "usm1/ess/P_set", 5000.0))
        await reaches(local, sp.id, cpb.SETPOINT_STATUS_CLAMPED)
        relay.blackhole()
        await usm.stop()
        usm = RemoteUsm(Extension(local.env("usm1", config=usm_config(remote, port, relay))))
        await usm.start()
        # Re-sent by the local core to the new process, which cannot reach the remote: it may
        # not say REJECTED about a setpoint the battery runs.
        held = await reaches(local, sp.id, cpb.SETPOINT_STATUS_UNCONFIRMED)
        assert "unreachable" in held.reason
        relay.restore()
        done = await reaches(local, sp.id, cpb.SETPOINT_STATUS_CLAMPED)
        assert done.applied_value.double_value == 3000.0
        assert list(sub.seen.values()) == [5000.0] and remote_requests(remote) == 1
    finally:
        await usm.stop()
        await sub.stop()
        await relay.close()
