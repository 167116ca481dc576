"""At most once across a restart of remote_usm: a setpoint the previous run forwarded, which the
remote's own operator then superseded, must not be sent again by the next run (which would make
the remote battery run it a second time, over the operator's newer decision).

1. a local setpoint (1000 W) is forwarded; the remote owner takes a moment to answer;
2. remote_usm stops (a crash, an update, a restart by the supervisor) before it reports;
3. on the remote, its own operator requests 2000 W: the forwarded setpoint is SUPERSEDED;
4. remote_usm starts again; the local core re-sends the local setpoint (still PENDING);
5. it is followed on the remote by id (kept on disk) and by its request key, found superseded,
   and reported so locally; the remote owner is asked once for 1000 W.

Two real cores, real mTLS."""

from __future__ import annotations

import asyncio

import pytest

from extensions.remote_usm import RemoteUsm
from extensions.sdk import Applied, Extension, PointSpec
from extensions.sdk.testing import until
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from tests.extensions.test_remote_usm import link_config, request_or_none
from tests.extensions.test_remote_usm import sites as sites  # the two-core fixture

pytestmark = pytest.mark.timeout(120)
NOT_YET = (cpb.SETPOINT_STATUS_PENDING, cpb.SETPOINT_STATUS_UNCONFIRMED)


async def answered(local, sid):
    sp = (await local.stubs("ctrl").control.GetSetpoint(cpb.GetSetpointRequest(id=sid))).setpoint
    return sp if sp.status not in NOT_YET else None


async def test_a_restarted_link_does_not_forward_a_superseded_setpoint_again(sites):
    remote, local, port = sites
    ess = Extension(remote.env("ess"))
    ess.declare(PointSpec("ess/P", unit="W"), PointSpec("ess/P_set", unit="W"))
    applied: list[tuple[str, float]] = []

    @ess.on_setpoint("ess/P_set", timeout=30)
    async def set_power(req):
        if req.requester.endswith("/usm-link"):
            await asyncio.sleep(2.0)  # the remote owner takes a moment
        applied.append((req.requester.rsplit("/", 1)[-1], req.value))
        return Applied()

    await ess.start()
    ess.publish("ess/P", 0.0)
    cfg = {**link_config(remote, port), "forward_timeout": 10}
    usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
    await usm.start()
    try:
        sp = await until(lambda: request_or_none(local, "usm1/ess/P_set", 1000.0), timeout=20)
        await until(lambda: usm.forwarder.forwarded.get(sp.id), timeout=10)
        await usm.stop()  # before the remote owner's answer came back
        await until(lambda: applied == [("usm-link", 1000.0)], timeout=10)

        # The remote's own operator decides otherwise.
        req = cpb.RequestSetpointRequest(name="ess/P_set", value=ppb.Value(double_value=2000.0))
        req.valid_for.FromSeconds(600)
        await remote.stubs("admin").control.RequestSetpoint(req)
        await until(lambda: applied[-1:] == [("admin", 2000.0)], timeout=10)

        usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
        await usm.start()
        await asyncio.sleep(6.0)
        assert applied == [("usm-link", 1000.0), ("admin", 2000.0)], applied
        done = await until(lambda: answered(local, sp.id), timeout=15)
        assert done.status == cpb.SETPOINT_STATUS_REJECTED
        assert done.reason.endswith("superseded there")
    finally:
        await usm.stop()
        await ess.stop()
