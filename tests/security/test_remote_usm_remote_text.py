"""What a remote USM (hostile, or its owner extension misbehaving) answers reaches this site's
core, its audit log and the local requester's stream: a reason of a megabyte must arrive bounded
(the remote core caps reasons, and remote_usm keeps at most 200 printable characters of
whatever the remote says). Two real cores, real mTLS."""

from __future__ import annotations

import pytest

from extensions.remote_usm import RemoteUsm
from extensions.sdk import Extension, PointSpec, Rejected
from extensions.sdk.testing import until
from smx.v1 import control_service_pb2 as cpb
from tests.contract.audit_log import audit_records
from tests.extensions.test_remote_usm import Sub, link_config, outcome, request_or_none
from tests.extensions.test_remote_usm import sites as sites  # the two-core fixture

pytestmark = pytest.mark.timeout(90)

HUGE = "r" * (1024 * 1024)


async def test_a_remote_reason_is_bounded_before_it_reaches_the_local_core(sites):
    remote, local, port = sites
    sub = Sub(remote)

    @sub.ext.on_setpoint("ess/SoC_min_set")
    async def refuse(req):
        return Rejected(HUGE)

    sub.ext.declare(PointSpec("ess/SoC_min_set", unit="%"))
    await sub.start()
    usm = RemoteUsm(Extension(local.env("usm1", config=link_config(remote, port))))
    await usm.start()
    try:
        sp = await until(lambda: request_or_none(local, "usm1/ess/SoC_min_set", 5.0), timeout=20)
        done = await outcome(local, sp.id)
        assert done.status == cpb.SETPOINT_STATUS_REJECTED
        records = await audit_records(local.stubs("admin"), kind="setpoint_report")
        biggest = max(r.ByteSize() for r in records)
        assert len(done.reason) <= 4096, f"local reason of {len(done.reason)} characters"
        assert biggest <= 16384, f"local audit record of {biggest} bytes"
    finally:
        await usm.stop()
        await sub.stop()
