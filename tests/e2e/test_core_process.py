"""The core as its own OS process: clean restart, kill -9 recovery, policy reload by SIGHUP,
socket permissions."""

from __future__ import annotations

import os
import signal
import stat
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from smx.client import error_reason
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.support.site import CoreProcess, Site

FLUSH_S = 0.2  # CoreProcess writes flush_interval = "200ms"


@pytest.fixture
def plain_site():
    s = Site()
    yield s
    s.cleanup()


def write(stubs, name: str, value: float, ts_ms: int | None = None) -> int:
    sample = ppb.PointSample(name=name, value=ppb.Value(double_value=value))
    if ts_ms is not None:
        sample.source_time.FromMilliseconds(ts_ms)
    return stubs.points.WritePoints(spb.WritePointsRequest(samples=[sample])).revision


def history(stubs, name: str) -> list[tuple[int, float]]:
    start = Timestamp()
    start.FromMilliseconds(0)
    return [
        (s.sample_time.ToMilliseconds(), s.value.double_value)
        for chunk in stubs.points.ReadHistory(
            spb.ReadHistoryRequest(names=[name], start_time=start)
        )
        for s in chunk.samples
    ]


def test_socket_is_0660_and_clean_restart_keeps_everything(plain_site):
    site = plain_site
    core = CoreProcess(site)
    assert stat.S_IMODE(os.stat(site.socket).st_mode) == 0o660
    meter = site.sync_stubs("meter")
    meter.points.DeclarePoints(
        spb.DeclarePointsRequest(
            points=[
                ppb.PointMetadata(
                    name="meter/Ap", unit="kWh", kind=ppb.VALUE_KIND_DOUBLE, index_max=999999.99
                )
            ]
        )
    )
    base = 1_700_000_000_000
    for i in range(10):
        rev = write(meter, "meter/Ap", 100 + i, base + i * 1000)
    core.kill(signal.SIGTERM)
    assert core.proc.returncode == 0
    assert not site.socket.exists()

    core = CoreProcess(site)
    gui = site.sync_stubs("gui")
    (p,) = gui.points.GetPoints(spb.GetPointsRequest(names=["meter/Ap"])).points
    assert p.value.double_value == 109 and p.unit == "kWh"
    assert p.revision == rev  # the point as it was
    (m,) = gui.points.ListPoints(spb.ListPointsRequest(pattern="meter/Ap")).points
    assert m.index_max == 999999.99 and m.owner.endswith("/meter")
    assert history(gui, "meter/Ap") == [(base + i * 1000, 100 + i) for i in range(10)]
    # Revisions never go back: the next write is beyond anything handed out before.
    assert write(meter, "meter/Ap", 200) > rev
    core.kill(signal.SIGTERM)


def test_kill_9_loses_at_most_the_last_flush_interval(plain_site):
    site = plain_site
    core = CoreProcess(site)
    meter = site.sync_stubs("meter")
    acked: list[tuple[float, int]] = []  # (monotonic time of the ack, value)
    t_end = time.monotonic() + 2.0
    i = 0
    while time.monotonic() < t_end:
        write(meter, "meter/P", float(i), 1_700_000_000_000 + i)
        acked.append((time.monotonic(), i))
        i += 1
    killed_at = time.monotonic()
    core.kill(signal.SIGKILL)
    assert core.proc.returncode == -signal.SIGKILL

    core = CoreProcess(site)  # a stale socket file is left behind: the core must cope
    gui = site.sync_stubs("gui")
    kept = {int(v) for _, v in history(gui, "meter/P")}
    # Everything acknowledged more than one flush interval (+ scheduling margin) before the kill
    # survived; nothing was invented.
    must_survive = {v for t, v in acked if t < killed_at - FLUSH_S - 0.3}
    assert len(must_survive) > 50
    assert must_survive <= kept
    assert kept <= {v for _, v in acked}
    (p,) = gui.points.GetPoints(spb.GetPointsRequest(names=["meter/P"])).points
    assert p.value.double_value >= max(must_survive)
    core.kill(signal.SIGTERM)


def test_sighup_reloads_policy_without_dropping_connections(plain_site):
    site = plain_site
    core = CoreProcess(site)
    write(site.sync_stubs("meter"), "meter/P", 1.0)
    # The battery extension may read its own points and meter/P, not meter/Q yet.
    ess = site.sync_stubs("ess")
    stream = ess.points.WatchPoints(spb.WatchPointsRequest(patterns=["meter/*"]))
    updates = iter(stream)
    assert [p.name for p in next(updates).points] == ["meter/P"]
    nobody = site.sync_stubs("nobody")
    with pytest.raises(grpc.RpcError) as info:
        nobody.points.GetPoints(spb.GetPointsRequest(names=["core/uptime"]))
    assert error_reason(info.value) == "PERMISSION_NOT_GRANTED"

    site.write_policy(extra_bindings=[("trusted/nobody", ["gui"])])
    text = (
        (site.home / "policy.toml")
        .read_text()
        .replace('points = ["meter/P"]', 'points = ["meter/P", "meter/Q"]')
    )
    (site.home / "policy.toml").write_text(text)
    core.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        try:
            got = nobody.points.GetPoints(spb.GetPointsRequest(names=["core/uptime"]))
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "policy not reloaded"
            time.sleep(0.1)
    # Same open connection for nobody, same open stream for ess: the new rules apply to both.
    assert got.points[0].name == "core/uptime"
    assert nobody.identity.WhoAmI(ipb.WhoAmIRequest()).roles == ["gui"]
    write(site.sync_stubs("meter"), "meter/Q", 2.0)
    assert [p.name for p in next(updates).points] == ["meter/Q"]
    stream.cancel()
    reloads = (
        site.sync_stubs("admin")
        .admin.ListAuditRecords(apb.ListAuditRecordsRequest(kind="policy_reload"))
        .audit_records
    )
    assert [r.identity for r in reloads] == ["signal:SIGHUP"]
    core.kill(signal.SIGTERM)


def test_invalid_policy_reload_is_refused_and_old_policy_stays(plain_site):
    site = plain_site
    core = CoreProcess(site)
    admin = site.sync_stubs("admin")
    (site.home / "policy.toml").write_text('[roles.x]\nrules = [{ verb = ["read"] }]\n')
    with pytest.raises(grpc.RpcError) as info:
        admin.admin.ReloadPolicy(apb.ReloadPolicyRequest())
    assert error_reason(info.value) == "POLICY_INVALID"
    assert "verb" in info.value.details()
    # Still the old policy: the admin keeps its rights, the gui client too.
    assert admin.identity.WhoAmI(ipb.WhoAmIRequest()).roles == ["admin"]
    assert site.sync_stubs("gui").points.ListPoints(spb.ListPointsRequest()).points
    core.kill(signal.SIGTERM)


def test_revisions_are_never_reused_after_a_crash_before_the_first_flush(plain_site):
    # Nothing reached the history log, so no persisted point tells the new core where the old
    # one's revisions ended; the revision floor written at start-up does.
    site = plain_site
    core = CoreProcess(site, flush_interval="60s")
    meter = site.sync_stubs("meter")
    last = max(write(meter, "meter/P", float(i)) for i in range(20))
    core.kill(signal.SIGKILL)
    core = CoreProcess(site)
    meter = site.sync_stubs("meter")
    assert write(meter, "meter/P", 1.0) > last
    stream = site.sync_stubs("gui").points.WatchPoints(spb.WatchPointsRequest(start_revision=last))
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stream))
    assert error_reason(info.value) == "REVISION_COMPACTED"
    core.kill(signal.SIGTERM)
