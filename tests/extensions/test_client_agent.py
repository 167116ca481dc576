"""Agents (smx.sdk.Agent): untrusted processes that request setpoints and follow their outcomes
on the core's stream, and publish their health only where the policy lets them (the whole demo
site under `smx run`, without a single denial: tests/e2e/test_demo_site.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from extensions.sdk import Agent, Applied, Extension, SetpointState
from extensions.sdk.testing import TestSite, until
from smx.v1 import admin_service_pb2 as apb
from tests.extensions.test_client import client_points

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site():
    with TestSite(
        {
            "battery": ("trusted", ["trusted-extension"], []),
            "planner": ("untrusted", ["untrusted-agent"], []),
            "viewer": ("untrusted", ["gui"], []),  # a role without its own health points
        }
    ) as s:
        yield s


async def test_an_agent_follows_outcomes_and_publishes_its_health(site):
    owner = Extension(site.env("battery"))

    @owner.on_setpoint("battery/P_set")
    async def set_power(req):
        return Applied()

    agent = Agent(site.env("planner"))
    outcomes: list[SetpointState] = []
    agent.on_outcome(outcomes.append)

    async def plan() -> None:
        sp = await agent.request_setpoint("battery/P_set", 1000.0, valid_for=30)
        await agent.outcome(sp.id, timeout=10)

    await owner.start()
    await until(lambda: owner.client.connected)
    await until(lambda: owner.client.declared("battery/P_set"))
    agent.background(plan)
    await agent.start()
    try:
        done = await until(lambda: next((o for o in outcomes if o.status == "APPLIED"), None))
        assert done.name == "battery/P_set" and done.value == 1000.0
        async with site.client("admin") as admin:
            got = await until(lambda: client_points(admin, "planner/ext.state"), timeout=10)
        assert got["planner/ext.state"].value == "running"
        assert agent.health()["state"] == "running"
    finally:
        await agent.stop()
        await owner.stop()


async def test_an_agent_skips_health_points_its_role_does_not_let_it_write(site):
    viewer = Agent(site.env("viewer"))
    await viewer.start()
    try:
        await until(lambda: viewer.client.connected)
        await until(lambda: viewer.health()["state"] == "running")
        await asyncio.sleep(4.5)  # the health loop runs every 2 s: a few turns
        assert _health_points(viewer) == [] and viewer.client.dropped == 0
        async with site.client("admin") as admin:
            denied = await admin.stubs.admin.ListAuditRecords(
                apb.ListAuditRecordsRequest(
                    kind="denied", identity="spiffe://test-site/untrusted/viewer"
                )
            )
        assert list(denied.audit_records) == []
        assert read_health(viewer)["state"] == "running"
    finally:
        await viewer.stop()


def _health_points(agent: Agent) -> list[str]:
    return [n for n in agent.client.declared_names() if n.endswith("/ext.state")]


def read_health(agent: Agent) -> dict:
    return json.loads(agent.env.health_file.read_text())
