"""SDK behaviour that needs no core: back-off of a long-dead device, and the setpoint router's
decisions when setpoints replace each other or are re-sent after a reconnect."""

from __future__ import annotations

import asyncio
import types

from extensions.sdk import Applied, PolledDevice
from extensions.sdk.devices import DeviceState, poll_forever
from extensions.sdk.setpoints import SetpointRequest, SetpointRouter
from smx.v1 import control_service_pb2 as pb


class Dead(PolledDevice):
    name, interval, timeout, max_backoff = "dead", 0.01, 0.05, 0.02

    async def poll(self):
        raise OSError("no answer")


async def test_a_device_dead_for_days_keeps_its_poll_loop():
    # 2**1024 does not fit a float: the back-off must not crash after ~17 h of failures.
    state = DeviceState(consecutive_failures=5000)
    task = asyncio.create_task(poll_forever(Dead(), state, lambda *a: None))
    await asyncio.sleep(0.3)
    assert not task.done() and state.consecutive_failures > 5005
    task.cancel()


class Stray(PolledDevice):
    name, interval, timeout = "stray", 0.01, 1.0

    def __init__(self) -> None:
        self.calls = 0

    async def poll(self):
        self.calls += 1
        if self.calls == 2:
            raise asyncio.CancelledError  # a library cancelled something inside the poll
        return {"d/x": self.calls}


async def test_a_stray_cancellation_inside_a_poll_is_a_failed_poll_not_the_end():
    device, state = Stray(), DeviceState()
    task = asyncio.create_task(poll_forever(device, state, lambda *a: None))
    await asyncio.sleep(0.2)
    assert not task.done() and device.calls > 5 and state.failures == 1 and state.ok
    task.cancel()


def router_with_fake_core() -> tuple[SetpointRouter, list]:
    reports: list = []

    async def report(request, timeout=None):
        reports.append((request.id, request.status))

    client = types.SimpleNamespace(
        stubs=types.SimpleNamespace(control=types.SimpleNamespace(ReportSetpoint=report))
    )
    return SetpointRouter(client), reports  # type: ignore[arg-type]


def request(sid: str, value: float, seconds: float = 60) -> SetpointRequest:
    import time

    return SetpointRequest(sid, "b/P_set", value, "ctrl", time.time() + seconds)


async def test_late_expiry_of_a_replaced_setpoint_does_not_undo_the_newer_one():
    router, _ = router_with_fake_core()
    log: list = []

    async def apply(req):
        log.append(("apply", req.id))
        return Applied()

    async def fall_back(req):
        log.append(("fallback", req.id))

    router.add("b/P_set", apply, fall_back)
    await router._apply(request("A", 1000))
    await router._apply(request("B", 2000))
    await router._expire(request("A", 1000))  # the core's EXPIRED for A arrives late
    assert log == [("apply", "A"), ("apply", "B")]
    await router._expire(request("B", 2000))
    assert log[-1] == ("fallback", "B")


async def test_a_setpoint_re_sent_after_a_reconnect_is_reported_not_re_applied():
    router, reports = router_with_fake_core()
    applied: list = []

    async def apply(req):
        applied.append(req.id)
        return Applied()

    router.add("b/P_set", apply, None)
    await router._apply(request("A", 1000))
    await router._apply(request("A", 1000))  # the core re-sends what is in force
    assert applied == ["A"]
    assert reports == [("A", pb.SETPOINT_STATUS_APPLIED)] * 2


def test_a_failure_marks_the_last_values_bad_but_not_billing_snapshots():
    """BAD with the last good value, at the time of the failure; a billing snapshot is a
    record the meter dated, and a failed read does not make it bad."""
    import datetime as dt

    from extensions.sdk import Reading
    from extensions.sdk.devices import record_failure, record_success

    published: list[tuple[str, object, str, object]] = []

    def publish(point: str, value: object, quality: str, when: object) -> None:
        published.append((point, value, quality, when))

    state = DeviceState()
    billed = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    record_success("m", state, {"m/P": 5.0, "m/Ap.bill01": Reading(90.0, "GOOD", billed)}, publish)
    published.clear()
    record_failure("m", state, "no answer", publish)
    assert published == [("m/P", 5.0, "BAD", None)]
