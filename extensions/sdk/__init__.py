"""The SMX extension SDK: a device extension in its own process, with its own certificate.

An `Extension` is an smx.sdk `Runtime` (settings, lifecycle hooks, background tasks, health,
logs, exit codes) over one smx.sdk `Client`, plus devices and setpoint handlers:

- devices: `PolledDevice` (the SDK polls it: `poll()` returns readings) or `PushedDevice` (the
  source receives on its own and calls `self.publish(readings)` / `self.failed(err)`); both get
  the same health, BAD marking and back-off;
- setpoints: `@ext.on_setpoint(name, timeout=..., on_expire=...)` returning `Applied`,
  `Clamped`, `Rejected` or `Unconfirmed` (then `ext.setpoints.report_outcome` later);
- points: `PointSpec` declarations checked against the vocabulary, `publish`, `publish_sample`
  (as given, for mirrors), `Reading` for a device's own quality and timestamp.

It talks to the core only through the generated API (smx.v1) and the shared contracts in smx/.
See docs/EXTENSIONS.md and examples/.
"""

from smx.process_env import ProcessEnv, SetupError
from smx.sdk import (
    Agent,
    Client,
    CoreUnavailable,
    PointSpec,
    PointUpdate,
    Seconds,
    SetpointState,
    parse_settings,
    setting,
)

from .devices import Device, DeviceState, PolledDevice
from .extension import Extension, main_of
from .pushed import PushedDevice
from .setpoints import Applied, Clamped, Rejected, SetpointRequest, Unconfirmed
from .values import Reading

__all__ = [
    "Agent",
    "Applied",
    "Clamped",
    "Client",
    "CoreUnavailable",
    "Device",
    "DeviceState",
    "Extension",
    "PointSpec",
    "PointUpdate",
    "PolledDevice",
    "ProcessEnv",
    "PushedDevice",
    "Reading",
    "Rejected",
    "Seconds",
    "SetpointRequest",
    "SetpointState",
    "SetupError",
    "Unconfirmed",
    "main_of",
    "parse_settings",
    "setting",
]
