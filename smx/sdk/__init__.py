"""The SMX client SDK, for every kind of process that talks to the core: agents, the GUI, tools,
and (under extensions.sdk) device extensions.

- `Client`: one mTLS connection that reconnects by itself; get, list and watch points (resumed
  after a reconnect), buffered writes, setpoint requests and their outcomes on a stream.
- `Agent`: a process under the supervisor built on a Client: settings from site.toml, lifecycle
  hooks, background tasks, health for `smx status`, logs, signals, exit codes.
- `parse_settings` / `setting` / `Seconds`: typed config tables whose errors name the key.

It depends on the generated API (smx.v1) and the shared contracts in smx/ only, never on the
core. See docs/EXTENSIONS.md.
"""

from smx.process_env import ProcessEnv, SetupError

from .agent import Agent
from .client import Client, CoreUnavailable
from .config import Seconds, parse_settings, setting
from .outcomes import SetpointState
from .points import PointSpec, PointUpdate
from .runtime import Runtime

__all__ = [
    "Agent",
    "Client",
    "CoreUnavailable",
    "PointSpec",
    "PointUpdate",
    "ProcessEnv",
    "Runtime",
    "Seconds",
    "SetpointState",
    "SetupError",
    "parse_settings",
    "setting",
]
