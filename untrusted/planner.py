"""A small local planner (untrusted agent): requests storage power from a repeating plan.

It stands in for the grid-side recommendation (GESSCon load profiles) until the lessag MQTT
agent exists, and is what `smx demo` uses. It has no device: it only requests setpoints, with
the untrusted agent's narrow rights, and reports what the owner did with each.

Config: target = "battery/P_set", plan = [3000.0, -2000.0], every = 10.0, valid_for = 8.0
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from extensions.sdk import Extension, main_of
from smx.v1 import control_service_pb2 as pb

log = logging.getLogger("planner")


async def follow_plan(ext: Extension) -> None:
    cfg = dict(ext.config)
    target = str(cfg.get("target", "battery/P_set"))
    plan: list[Any] = list(cfg.get("plan", [3000.0, -2000.0]))
    every, valid_for = float(cfg.get("every", 10.0)), float(cfg.get("valid_for", 8.0))
    step = 0
    while True:
        value = plan[step % len(plan)]
        step += 1
        try:
            sp = await ext.request_setpoint(target, value, valid_for)
            for _ in range(20):  # the owner answers within its handler timeout
                await asyncio.sleep(0.25)
                sp = await ext.setpoint_status(sp.id)
                if sp.status != pb.SETPOINT_STATUS_PENDING:
                    break
            status = pb.SetpointStatus.Name(sp.status).removeprefix("SETPOINT_STATUS_")
            log.info("requested %s=%s for %gs: %s %s", target, value, valid_for, status, sp.reason)
        except grpc.aio.AioRpcError as err:
            # E.g. the owner has not declared the point yet at start-up: retry soon.
            log.warning("request %s=%s refused: %s", target, value, err.details())
            step -= 1
            await asyncio.sleep(min(2.0, every))
            continue
        await asyncio.sleep(every)


def setup(ext: Extension) -> None:
    ext.background(lambda: follow_plan(ext), "plan")


if __name__ == "__main__":
    main_of(setup)
