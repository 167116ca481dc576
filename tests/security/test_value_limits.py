"""Values are validated at the edge: timestamps protobuf can represent, finite numbers, bounded
strings and replies, and watch heartbeats frequent enough to re-check the caller."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from smx.client import error_reason
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as pb
from tests.contract.calls import refusal
from trusted.core.config import ConfigError, load_core_config
from trusted.core.server import Core


async def expect_error(coro, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    err = await refusal(coro)
    assert err.code() == code, err.details()
    assert error_reason(err) == reason
    return err


def write(name: str, value: ppb.Value, **kw) -> pb.WritePointsRequest:
    return pb.WritePointsRequest(samples=[ppb.PointSample(name=name, value=value, **kw)])


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253_402_300_800, 0),  # 10000-01-01
        (2**62, 0),
        (-62_135_596_801, 0),  # just before 0001-01-01
        (-(2**62), 0),
        (1_700_000_000, -1),
        (1_700_000_000, 1_000_000_000),
    ],
)
async def test_source_time_outside_the_timestamp_range_is_refused(site, core, seconds, nanos):
    meter = site.stubs("meter")
    ts = Timestamp(seconds=seconds, nanos=nanos)
    err = await expect_error(
        meter.points.WritePoints(write("meter/T", ppb.Value(double_value=1), source_time=ts)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert "meter/T" in (err.details() or "")
    await expect_error(
        meter.points.GetPoints(pb.GetPointsRequest(names=["meter/T"])),
        grpc.StatusCode.NOT_FOUND,
        "POINT_NOT_FOUND",
    )


async def test_source_time_at_the_edges_of_the_range_is_stored_and_readable(site, core):
    meter = site.stubs("meter")
    oldest = Timestamp(seconds=-62_135_596_800, nanos=0)
    await meter.points.WritePoints(write("meter/T", ppb.Value(double_value=1), source_time=oldest))
    (p,) = (await meter.points.GetPoints(pb.GetPointsRequest(names=["meter/T"]))).points
    assert p.source_time.ToJsonString() == "0001-01-01T00:00:00Z"
    # The far-future refusal still holds inside the range.
    ahead = Timestamp(seconds=int(time.time()) + 3 * 86400, nanos=999_999_999)
    await expect_error(
        meter.points.WritePoints(write("meter/T", ppb.Value(double_value=2), source_time=ahead)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_non_finite_measurements_are_refused_naming_the_point(site, core, value):
    meter = site.stubs("meter")
    err = await expect_error(
        meter.points.WritePoints(write("meter/P", ppb.Value(double_value=value))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert "meter/P" in (err.details() or "")
    await expect_error(
        meter.points.GetPoints(pb.GetPointsRequest(names=["meter/P"])),
        grpc.StatusCode.NOT_FOUND,
        "POINT_NOT_FOUND",
    )
    # Extreme finite values are measurements like any other.
    await meter.points.WritePoints(
        write("meter/P", ppb.Value(double_value=-1.7976931348623157e308))
    )


async def test_string_values_are_capped_by_max_string_bytes(site, core):
    meter = site.stubs("meter")
    limit = core.state.config.max_string_bytes
    assert limit == 2048  # the default
    await meter.points.WritePoints(write("meter/S", ppb.Value(string_value="x" * limit)))
    err = await expect_error(
        meter.points.WritePoints(write("meter/S", ppb.Value(string_value="x" * (limit + 1)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    )
    assert "meter/S" in (err.details() or "")
    # Bytes, not characters: 700 three-byte characters are 2100 bytes.
    await expect_error(
        meter.points.WritePoints(write("meter/S", ppb.Value(string_value="€" * 700))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_TOO_LARGE",
    )
    (p,) = (await meter.points.GetPoints(pb.GetPointsRequest(names=["meter/S"]))).points
    assert p.value.string_value == "x" * limit


async def test_max_string_bytes_is_configurable(site):
    core = Core(site.config(max_string_bytes=64))
    await core.start()
    try:
        meter = site.stubs("meter")
        await meter.points.WritePoints(write("meter/S", ppb.Value(string_value="y" * 64)))
        await expect_error(
            meter.points.WritePoints(write("meter/S", ppb.Value(string_value="y" * 65))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_TOO_LARGE",
        )
    finally:
        await core.stop(grace=0.1)


def test_limits_max_string_bytes_in_core_toml(tmp_path):
    toml = tmp_path / "core.toml"
    toml.write_text('[limits]\nmax_string_bytes = "4KB"\n')
    assert load_core_config(toml, home=tmp_path).max_string_bytes == 4096
    toml.write_text("[limits]\nmax_string_bytes = 8\n")
    with pytest.raises(ConfigError, match="limits.max_string_bytes"):
        load_core_config(toml, home=tmp_path)


@pytest.fixture
async def setpoints(site, core):
    await site.stubs("ess").points.DeclarePoints(
        pb.DeclarePointsRequest(
            points=[ppb.PointMetadata(name="ess/P_set", unit="W", kind=ppb.VALUE_KIND_DOUBLE)]
        )
    )
    return site.stubs("lessag").control


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_non_finite_setpoints_are_refused(site, setpoints, value):
    req = cpb.RequestSetpointRequest(
        name="ess/P_set", value=ppb.Value(double_value=value), valid_for=Duration(seconds=60)
    )
    err = await expect_error(
        setpoints.RequestSetpoint(req), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert "ess/P_set" in (err.details() or "")


async def test_a_non_finite_applied_value_is_refused(site, setpoints):
    req = cpb.RequestSetpointRequest(
        name="ess/P_set", value=ppb.Value(double_value=3000), valid_for=Duration(seconds=60)
    )
    sp = (await setpoints.RequestSetpoint(req)).setpoint
    ess = site.stubs("ess").control
    for bad in (ppb.Value(double_value=math.nan), ppb.Value(string_value="3000")):
        await expect_error(
            ess.ReportSetpoint(
                cpb.ReportSetpointRequest(
                    id=sp.id, status=cpb.SETPOINT_STATUS_CLAMPED, applied_value=bad
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALUE_KIND_MISMATCH" if bad.HasField("string_value") else "INVALID_ARGUMENT",
        )
    rep = await ess.ReportSetpoint(
        cpb.ReportSetpointRequest(
            id=sp.id, status=cpb.SETPOINT_STATUS_CLAMPED, applied_value=ppb.Value(double_value=1)
        )
    )
    assert rep.setpoint.applied_value.double_value == 1


async def test_watch_heartbeat_interval_is_at_most_a_minute(site, core):
    gui, ess, agent = site.stubs("gui"), site.stubs("ess"), site.stubs("lessag")
    for seconds, ok in ((60, True), (61, False), (10**9, False)):
        beat = Duration(seconds=seconds)
        streams = [
            gui.points.WatchPoints(pb.WatchPointsRequest(heartbeat_interval=beat)),
            ess.control.WatchSetpoints(cpb.WatchSetpointsRequest(heartbeat_interval=beat)),
            agent.control.WatchSetpointOutcomes(
                cpb.WatchSetpointOutcomesRequest(heartbeat_interval=beat)
            ),
        ]
        for stream in streams:
            if ok:
                # Accepted: a first message (a snapshot), or nothing yet on an idle stream.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.read(), 0.5)
                stream.cancel()
            else:
                err = await expect_error(
                    stream, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
                )
                assert "heartbeat_interval" in (err.details() or "")


async def test_get_points_answers_each_name_once(site, core):
    meter = site.stubs("meter")
    await meter.points.WritePoints(
        pb.WritePointsRequest(
            samples=[
                ppb.PointSample(name=n, value=ppb.Value(double_value=1))
                for n in ("meter/A", "meter/B")
            ]
        )
    )
    names = ["meter/B", "meter/A"] * 5000
    got = await meter.points.GetPoints(pb.GetPointsRequest(names=names))
    assert [p.name for p in got.points] == ["meter/B", "meter/A"]


async def test_a_reply_over_max_message_bytes_is_refused_before_it_is_built(site):
    core = Core(site.config(max_message_bytes=64 * 1024))
    await core.start()
    try:
        meter = site.stubs("meter")
        names = [f"meter/S{i}" for i in range(40)]  # 40 x 2 KiB strings: over 64 KiB
        for name in names:
            await meter.points.WritePoints(write(name, ppb.Value(string_value="z" * 2048)))
        err = await expect_error(
            meter.points.GetPoints(pb.GetPointsRequest(names=names)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "REPLY_TOO_LARGE",
        )
        assert "max_message_bytes" in (err.details() or "")
        # Fewer names per call, and the same names repeated, are answered.
        got = await meter.points.GetPoints(pb.GetPointsRequest(names=names[:20] * 50))
        assert len(got.points) == 20
    finally:
        await core.stop(grace=0.1)
