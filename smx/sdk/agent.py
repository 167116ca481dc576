"""`Agent`: a process without devices — the north-bound agents (untrusted), planners, bridges.
It reads points, requests setpoints and follows their outcomes on the core's stream, and tells
the supervisor how it is doing, with the narrow rights of its role.

    agent = Agent.from_environ()

    @agent.on_outcome
    def report(sp: SetpointState) -> None:
        log.info("%s=%s: %s %s", sp.name, sp.value, sp.status, sp.reason)

    async def plan() -> None:
        sp = await agent.request_setpoint("battery/P_set", 3000.0, valid_for=60)
        done = await agent.outcome(sp.id, timeout=10)

    agent.background(plan)
    raise SystemExit(agent.run())
"""

from __future__ import annotations

from .runtime import Runtime

__all__ = ["Agent"]


class Agent(Runtime):
    def describe(self) -> str:
        return f"agent with {len(self._background)} background tasks"
