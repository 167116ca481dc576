"""A tiny stand-in extension for supervisor tests: `python -m tests.support.dummy_ext`.

With a certificate in its environment (as the supervisor gives extensions and agents)
it writes its health file every 0.5 s and the point `<SMX_NAME>/alive` (a counter) every 0.5 s,
reconnecting by itself when the core goes away. Without one (a simulator) it only idles. Either
way it prints its interpreter's flags and its config file's contents once and exits 0 on
SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc

from smx.client import Stubs
from smx.health import HealthReport, write_health_file
from smx.process_env import ENV_NAME, ProcessEnv, SetupError, load_config
from smx.v1 import point_pb2, point_service_pb2

__all__ = ["main"]

PERIOD_S = 0.5


def _write_health(path: Path, state: str, connected: bool, error: str) -> None:
    write_health_file(path, HealthReport(state, core_connected=connected, last_error=error))


def main() -> int:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    # How the supervisor started it (site_config.PYTHON_FLAGS), and whether the directory it
    # runs in would be searched for modules.
    cwd_searched = any(os.path.abspath(p or ".") == os.getcwd() for p in sys.path)
    flags = sys.flags
    print(f"flags: optimize={flags.optimize} safe_path={flags.safe_path} cwd={cwd_searched}")
    # The process contract (docs/SITE.md) read with its one definition, as any process would.
    try:
        env = ProcessEnv.from_environ(os.environ)
    except SetupError:  # a simulator: only a name and a config file
        name = os.environ[ENV_NAME]
        print(f"{name}: config {json.dumps(load_config(os.environ), sort_keys=True)}", flush=True)
        while not stop:
            time.sleep(0.1)
        return 0
    name = env.name
    print(f"{name}: config {json.dumps(env.load_config(), sort_keys=True)}", flush=True)
    assert env.health_file is not None
    health, creds, target = env.health_file, env.credentials, env.target
    channel = None
    counter = 0
    error = ""
    connected = False
    _write_health(health, "starting", False, "")
    while not stop:
        if channel is None:
            channel = creds.channel(target)
        sample = point_pb2.PointSample(
            name=f"{name}/alive", value=point_pb2.Value(double_value=float(counter))
        )
        try:
            Stubs(channel).points.WritePoints(
                point_service_pb2.WritePointsRequest(samples=[sample]), timeout=1.0
            )
            connected, error = True, ""
            counter += 1
        except grpc.RpcError as err:
            # Start from a fresh channel: reconnects at once instead of after grpc's back-off.
            connected, error = False, f"{err.code().name}: {err.details()}"
            print(f"{name}: write failed: {error}", file=sys.stderr, flush=True)
            channel.close()
            channel = None
        _write_health(health, "running" if connected else "degraded", connected, error)
        time.sleep(PERIOD_S)
    _write_health(health, "stopping", connected, error)
    if channel is not None:
        channel.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
