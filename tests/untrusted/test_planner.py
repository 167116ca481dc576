"""The planner (untrusted agent) on the SDK's public face: a request the core refuses
(smx.sdk.CallFailed) is logged and asked again soon, never a crash of the plan."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from extensions.sdk.testing import until
from smx.sdk import CallFailed, SetpointState
from untrusted import planner
from untrusted.planner import PlannerConfig, follow_plan


class RefusesFirst:
    """An agent whose first request is refused (the owner has not declared the point yet)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def request_setpoint(self, name: str, value: Any, valid_for: float) -> SetpointState:
        self.asked.append(value)
        if len(self.asked) == 1:
            raise CallFailed(
                grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "no such point"
            )
        return SetpointState(id=f"sp{len(self.asked)}", name=name, value=value, status="PENDING")

    async def outcome(self, setpoint_id: str, timeout: float | None = None) -> SetpointState:
        return SetpointState(id=setpoint_id, name="battery/P_set", value=0.0, status="APPLIED")


async def test_a_refused_request_is_asked_again_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(planner, "RETRY_S", 0.01)
    agent = RefusesFirst()
    cfg = PlannerConfig(plan=[3000.0, -2000.0], every=0.05)
    with caplog.at_level(logging.WARNING, logger="planner"):
        plan = asyncio.create_task(follow_plan(agent, cfg))
        try:
            await until(lambda: len(agent.asked) >= 3, what="three requests")
            assert not plan.done()
        finally:
            plan.cancel()
    assert agent.asked[:3] == [3000.0, 3000.0, -2000.0]  # the refused step, then the plan on
    assert "request battery/P_set=3000.0 refused: no such point" in caplog.text
