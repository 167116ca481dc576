"""remote_usm: mirror another USM's core into this one under a prefix, and forward setpoints for
mirrored points down to it (storage, EV and PV sub-meters that are USMs of their own).

Configuration, the remote operator's steps and the link's guarantees: docs/METERING.md.
"""

from __future__ import annotations

import dataclasses
import logging

from extensions.sdk import Credentials, Extension, SetupError
from smx.process_env import require_readable

from .config import RemoteConfig
from .forward import UNREACHABLE, SetpointForwarder
from .mirror import Mirror
from .remote import RemoteLink

__all__ = [
    "UNREACHABLE",
    "Mirror",
    "RemoteConfig",
    "RemoteLink",
    "RemoteUsm",
    "SetpointForwarder",
]

log = logging.getLogger(__name__)


class RemoteUsm:
    """The extension: the SDK's Extension (local core) plus the remote link, mirror and
    forwarder. `RemoteUsm(ext)` is its setup; a missing remote certificate is a SetupError."""

    def __init__(self, ext: Extension) -> None:
        cfg = ext.settings(RemoteConfig)
        self.cfg = dataclasses.replace(cfg, prefix=cfg.prefix or ext.name)
        try:
            self.cfg.credentials.check()
        except FileNotFoundError as err:
            raise SetupError(
                f"{err}: the remote site's operator issues this link's certificate "
                "(`smx pki issue usm-link --domain trusted` on the remote USM)"
            ) from err
        _readable(self.cfg.credentials)
        self.ext = ext
        self.remote = RemoteLink(self.cfg.remote, self.cfg.credentials)
        self.mirror = Mirror(ext, self.cfg, self.remote)
        self.forwarder = SetpointForwarder(ext, self.cfg, self.remote)
        ext.on_start(self.remote.start)
        ext.background(self.mirror.run, "remote-mirror")
        ext.background(self.mirror.publish_link_forever, "remote-link-points")
        ext.background(self.forwarder.reconcile_forever, "setpoint-reconcile")
        ext.on_stop(self.remote.close)

    async def start(self) -> None:
        """For tests and embedding: start everything, return."""
        await self.ext.start()

    async def stop(self) -> None:
        await self.ext.stop()


def _readable(creds: Credentials) -> None:
    """Under `smx run` as root this process has a user of its own: the copied files must be
    its to read (one line naming the user and the fix otherwise)."""
    require_readable({"remote_ca": creds.ca, "remote_cert": creds.cert, "remote_key": creds.key})
