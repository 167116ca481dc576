"""remote_usm: mirror another USM's core into this one under a prefix, and forward setpoints for
mirrored points down to it (storage, EV and PV sub-meters that are USMs of their own).

    [extensions.usm1]
    module = "extensions.remote_usm"
    [extensions.usm1.config]
    remote = "10.0.0.17:7443"
    remote_ca = "/etc/smx/usm1/ca.crt"
    remote_cert = "/etc/smx/usm1/usm-link.crt"
    remote_key = "/etc/smx/usm1/usm-link.key"

Config keys (SMX_CONFIG): `remote` (host:port of the remote core's TCP listener, its core.toml
`tcp = "..."`), `remote_ca`, `remote_cert`, `remote_key` (paths), `prefix` (default: the
extension's name), `patterns` (remote points to mirror, default ["**"]), `period` (s, default 5:
republish period and minimum expected period of mirrored points), `forward_timeout` (s, default
8: how long a forwarded setpoint waits for the remote owner's report). See config.py.

Local side: name the extension after its prefix (`usm1`); the default `trusted-extension` role
then lets it write `usm1/**` (the mirror, `usm1/link.up`, `usm1/link.revision`) and control
`usm1/**` setpoints. Local requesters need `request` on `usm1/**/*_set` (the default
untrusted-agent role has it).

Remote side, done by the remote site's operator:

    smx pki issue usm-link --domain trusted     # copy ca.crt, usm-link.crt/.key to this box

and in the remote policy.toml (read what is mirrored, request the forwarded setpoints):

    [[bindings]]
    identity = "spiffe://<remote-site>/trusted/usm-link"
    roles = ["gui"]
    rules = [ { verbs = ["request"], points = ["**/*_set"] } ]

then `smx admin reload`. Narrower is fine: `read` on the mirrored patterns (GetSetpoint, used to
follow a forwarded request, needs `read` on the setpoint point or being its requester) and
`request` on the setpoints to forward (e.g. `ess/P_set`). `smx policy bind usm-link
energy-router` also works but grants more (write/control of `usm-link/**`).

Qualities: kept, except a remote STALE, which is written once as UNCERTAIN (the local core
refuses STALE from writers) and not republished, so it turns STALE locally too.
"""

from __future__ import annotations

import asyncio
import logging

from extensions.sdk import Extension, SetupError
from extensions.sdk.logs import configure_logging

from .config import ConfigError, RemoteConfig
from .forward import UNREACHABLE, SetpointForwarder
from .mirror import Mirror
from .remote import RemoteLink

__all__ = [
    "UNREACHABLE",
    "ConfigError",
    "Mirror",
    "RemoteConfig",
    "RemoteLink",
    "RemoteUsm",
    "SetpointForwarder",
]

log = logging.getLogger(__name__)


class RemoteUsm:
    """The extension: the SDK's Extension (local core) plus the remote link, mirror, forwarder."""

    def __init__(self, ext: Extension) -> None:
        try:
            self.cfg = RemoteConfig.parse(ext.config, ext.name)
        except ConfigError as err:
            raise SetupError(str(err)) from err
        self.ext = ext
        self.remote = RemoteLink(self.cfg.remote, self.cfg.credentials)
        self.mirror = Mirror(ext, self.cfg, self.remote)
        self.forwarder = SetpointForwarder(ext, self.cfg, self.remote)
        ext.background(self.mirror.run, "remote-mirror")
        ext.background(self.mirror.republish_forever, "remote-republish")

    def check(self) -> None:
        try:
            self.cfg.credentials.check()
        except FileNotFoundError as err:
            raise SetupError(
                f"{err}: the remote site's operator issues this link's certificate "
                "(`smx pki issue usm-link --domain trusted` on the remote USM)"
            ) from err

    async def start(self) -> None:
        """For tests and embedding: start everything, return."""
        self.check()
        await self.ext.start()

    async def stop(self) -> None:
        await self.ext.stop()
        await self.remote.close()

    async def main(self) -> None:
        """Run until SIGTERM/SIGINT."""
        try:
            await self.ext.main()
        finally:
            await self.remote.close()

    def run(self) -> int:
        configure_logging(self.ext.name)
        try:
            self.ext.env.check_certificate()
            self.check()
        except SetupError as err:
            log.error("cannot start: %s", err)
            return 2
        asyncio.run(self.main())
        return 0
