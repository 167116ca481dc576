"""The SMX client SDK, for every kind of process that talks to the core: agents, the GUI, tools,
and (under extensions.sdk) device extensions.

- `Client`: one mTLS connection that reconnects by itself; get, list and watch points (resumed
  after a reconnect) and read their history, buffered writes, setpoint requests and their
  outcomes on a stream.
- `Agent`: a process under the supervisor built on a Client: settings from site.toml, lifecycle
  hooks, background tasks, health for `smx status`, logs, signals, exit codes.
- `parse_settings` / `setting` / `Seconds`: typed config tables whose errors name the key.
- `Credentials` (a certificate and key, for `Client(target, credentials)`), `CallFailed` (a call
  the core refused or did not answer), `CoreUnavailable` (no core within the time given),
  `DeviceHealth` / `HealthReport` (what a process overrides to report its health),
  `Subscription` (what `watch` returns) and `TaskSet` (a process's background tasks).

It depends on the generated API (smx.v1) and the shared contracts in smx/ only, never on the
core. See docs/EXTENSIONS.md.
"""

# First: importing it keeps what websockets and paho-mqtt load and never use out of every
# process (~2-3 MiB each).
from smx import deferred_imports  # noqa: F401
from smx.client import Credentials
from smx.health import DeviceHealth, HealthReport
from smx.process_env import ProcessEnv, SetupError

from .agent import Agent
from .client import CallFailed, Client, CoreUnavailable
from .config import Seconds, parse_settings, setting
from .outcomes import SetpointState
from .points import HistorySample, PointSpec, PointUpdate
from .runtime import Runtime
from .tasks import TaskSet
from .watch import Subscription

__all__ = [
    "Agent",
    "CallFailed",
    "Client",
    "CoreUnavailable",
    "Credentials",
    "DeviceHealth",
    "HealthReport",
    "HistorySample",
    "PointSpec",
    "PointUpdate",
    "ProcessEnv",
    "Runtime",
    "Seconds",
    "SetpointState",
    "SetupError",
    "Subscription",
    "TaskSet",
    "parse_settings",
    "setting",
]
