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

Everything smx.sdk exports is exported here too (`Agent`, `Client`, `Credentials`, `CallFailed`,
`DeviceHealth`...), so an extension imports from one package. It talks to the core only through
the generated API (smx.v1) and the shared contracts in smx/. See docs/EXTENSIONS.md and
examples/.
"""

from smx.sdk import (
    Agent,
    CallFailed,
    Client,
    CoreUnavailable,
    Credentials,
    DeviceHealth,
    HealthReport,
    HistorySample,
    PointSpec,
    PointUpdate,
    ProcessEnv,
    Runtime,
    Seconds,
    SetpointState,
    SetupError,
    Subscription,
    TaskSet,
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
    "CallFailed",
    "Clamped",
    "Client",
    "CoreUnavailable",
    "Credentials",
    "Device",
    "DeviceHealth",
    "DeviceState",
    "Extension",
    "HealthReport",
    "HistorySample",
    "PointSpec",
    "PointUpdate",
    "PolledDevice",
    "ProcessEnv",
    "PushedDevice",
    "Reading",
    "Rejected",
    "Runtime",
    "Seconds",
    "SetpointRequest",
    "SetpointState",
    "SetupError",
    "Subscription",
    "TaskSet",
    "Unconfirmed",
    "main_of",
    "parse_settings",
    "setting",
]
