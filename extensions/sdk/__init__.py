"""The SMX extension SDK: write a south-bound extension (or an agent) in its own process.

It talks to the core only through the generated API (`smx.v1`) over mTLS, with the process's
own certificate. See docs/EXTENSIONS.md and examples/.
"""

from .devices import Device, DeviceState
from .env import ExtensionEnv, SetupError
from .extension import Extension, main_of
from .setpoints import Applied, Clamped, Rejected, SetpointRequest
from .subscriptions import PointUpdate
from .values import PointSpec, Reading

__all__ = [
    "Applied",
    "Clamped",
    "Device",
    "DeviceState",
    "Extension",
    "ExtensionEnv",
    "PointSpec",
    "PointUpdate",
    "Reading",
    "Rejected",
    "SetpointRequest",
    "SetupError",
    "main_of",
]
