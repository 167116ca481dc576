"""A small local planner (untrusted agent): requests storage power from a repeating plan.

It stands in for the grid-side recommendation (GESSCon load profiles) until the lessag MQTT
agent exists, and is what `smx demo` uses. It has no device: it only requests setpoints, with
the untrusted agent's narrow rights, and logs what the owner did with each as the core reports
it on the outcome stream (no polling).

    [agents.planner.config]
    target = "battery/P_set"
    plan = [3000.0, -2000.0]
    every = "10s"
    valid_for = "8s"
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from smx.sdk import Agent, CallFailed, Seconds, setting

log = logging.getLogger("planner")

# How long to wait for the owner's answer before requesting the next step anyway.
ANSWER_TIMEOUT_S = 10.0
RETRY_S = 2.0


def _not_empty(plan: list[float]) -> str | None:
    return None if plan else "must list at least one value"


@dataclass(frozen=True)
class PlannerConfig:
    target: str = "battery/P_set"
    plan: list[float] = setting(default_factory=lambda: [3000.0, -2000.0], check=_not_empty)
    every: Seconds = setting(10.0, min=1.0, max=86400)
    valid_for: Seconds = setting(8.0, min=1.0, max=86400)


async def follow_plan(agent: Agent, cfg: PlannerConfig) -> None:
    loop = asyncio.get_running_loop()
    step = 0
    while True:
        started = loop.time()
        value = cfg.plan[step % len(cfg.plan)]
        try:
            sp = await agent.request_setpoint(cfg.target, value, cfg.valid_for)
        except CallFailed as err:
            # E.g. the owner has not declared the point yet at start-up: retry soon.
            log.warning("request %s=%s refused: %s", cfg.target, value, err.details())
            await asyncio.sleep(min(RETRY_S, cfg.every))
            continue
        step += 1
        try:
            done = await agent.outcome(sp.id, timeout=min(ANSWER_TIMEOUT_S, cfg.every))
        except TimeoutError:
            log.warning("requested %s=%s: no answer from the owner yet", cfg.target, value)
        else:
            log.info(
                "requested %s=%s for %gs: %s %s",
                cfg.target,
                value,
                cfg.valid_for,
                done.status,
                done.reason,
            )
        await asyncio.sleep(max(0.0, started + cfg.every - loop.time()))


def setup(agent: Agent) -> None:
    cfg = agent.settings(PlannerConfig)
    agent.background(lambda: follow_plan(agent, cfg), "plan")


if __name__ == "__main__":
    Agent.main_of(setup)
