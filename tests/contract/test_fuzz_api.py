"""Fuzzing the API of a running core (its own process): random bytes, random requests and
random patterns get a clear status, never an internal error, and the core keeps serving."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smx.client import Stubs, error_reason
from smx.v1 import (
    admin_service_pb2,
    control_service_pb2,
    identity_service_pb2,
    point_service_pb2,
)
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.support.site import CoreProcess, Site

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Codes that tell the client what it did wrong; INTERNAL and UNKNOWN would mean a crash path.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

METHODS = [
    (module.DESCRIPTOR.services_by_name[svc], m)
    for module, svc in (
        (point_service_pb2, "PointService"),
        (control_service_pb2, "ControlService"),
        (identity_service_pb2, "IdentityService"),
        (admin_service_pb2, "AdminService"),
    )
    for m in module.DESCRIPTOR.services_by_name[svc].methods
]


@pytest.fixture(scope="module")
def running():
    site = Site()
    core = CoreProcess(site)
    channel = site.creds("admin").channel(site.target)
    yield site, core, channel
    channel.close()
    alive = core.proc.poll() is None
    core.kill(15)
    site.cleanup()
    assert alive, "the core died during fuzzing"


def call_raw(channel, service, method, data: bytes):
    path = f"/{service.full_name}/{method.name}"
    if method.server_streaming:
        stream = channel.unary_stream(path)(data, timeout=0.5)
        try:
            next(iter(stream))
        except StopIteration:
            pass
        finally:
            stream.cancel()
    else:
        channel.unary_unary(path)(data, timeout=2)


@pytest.mark.parametrize("service, method", METHODS, ids=lambda x: getattr(x, "name", ""))
def test_random_bytes_never_crash(running, service, method):
    _, core, channel = running

    @FUZZ
    @given(st.binary(max_size=512))
    def check(data):
        try:
            call_raw(channel, service, method, data)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            assert err.code() in CLIENT_ERRORS, (err.code(), err.details())
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                assert error_reason(err), err.details()

    check()
    assert core.proc.poll() is None


names = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[a-z][a-z0-9_-]{0,5}/[A-Za-z][A-Za-z0-9_.]{0,8}", fullmatch=True),
)
values = st.one_of(
    st.builds(lambda v: ppb.Value(double_value=v), st.floats(allow_nan=True)),
    st.builds(lambda v: ppb.Value(int_value=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: ppb.Value(bool_value=v), st.booleans()),
    st.builds(lambda v: ppb.Value(string_value=v), st.text(max_size=50)),
    st.just(ppb.Value()),
)
samples = st.builds(
    lambda n, v, q: ppb.PointSample(name=n, value=v, quality=q), names, values, st.integers(0, 8)
)


@FUZZ
@given(st.lists(samples, max_size=8))
def test_random_write_batches_are_stored_exactly_or_refused(running, batch):
    site, _, channel = running
    stubs = Stubs(channel)
    try:
        stubs.points.WritePoints(spb.WritePointsRequest(samples=batch))
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert error_reason(err) in {
            "INVALID_POINT_NAME",
            "INVALID_ARGUMENT",
            "VALUE_KIND_MISMATCH",
        }
        return
    got = stubs.points.GetPoints(spb.GetPointsRequest(names=[s.name for s in batch])).points
    for sent, stored in zip(batch, got, strict=True):
        assert stored.quality == (sent.quality or ppb.QUALITY_GOOD)
        kind = sent.value.WhichOneof("kind")
        if kind is None:  # a quality-only update (BAD, UNCERTAIN) keeps the point's value
            continue
        # Stored as sent, or an int written to a double point as that exact double.
        got_kind = stored.value.WhichOneof("kind")
        assert got_kind == kind or (kind, got_kind) == ("int_value", "double_value")
        a, b = getattr(sent.value, kind), getattr(stored.value, got_kind)
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@FUZZ
@given(st.lists(st.text(alphabet="ab/*_.-xyzAB019{}? ", max_size=20), max_size=4))
def test_random_patterns_are_accepted_or_invalid_argument(running, patterns):
    site, _, channel = running
    stubs = Stubs(channel)
    for pattern in patterns:
        try:
            stubs.points.ListPoints(spb.ListPointsRequest(pattern=pattern))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(err) == "INVALID_POINT_NAME"
    stream = stubs.points.WatchPoints(spb.WatchPointsRequest(patterns=patterns), timeout=2)
    try:
        first = next(iter(stream))
        assert first.snapshot
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    finally:
        stream.cancel()
