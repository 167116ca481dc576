"""remote_usm: mirror another USM's core into this one under a prefix, and forward setpoints for
mirrored points down to it (storage, EV and PV sub-meters that are USMs of their own).

    [extensions.usm1]
    module = "extensions.remote_usm"
    [extensions.usm1.config]
    remote = "10.0.0.17:7443"
    remote_ca = "/etc/smx/usm1/ca.crt"
    remote_cert = "/etc/smx/usm1/usm-link.crt"
    remote_key = "/etc/smx/usm1/usm-link.key"

Config keys (SMX_CONFIG): `remote` (host:port of the remote core's TCP listener, required with
its port; the remote site.toml's `[core]` or core.toml
`tcp = "..."`), `remote_ca`, `remote_cert`, `remote_key` (paths), `prefix` (default: the
extension's name), `patterns` (remote points to mirror, default ["**"]), `period` (s, default 4:
expected period of mirrored points; STALE within 2 x period of the last message), `link_timeout`
(s, default 6: silence after which the link is down), `forward_timeout` (s, default 8: how long
a forwarded setpoint waits for the remote's answer before it is UNCONFIRMED). See config.py and
docs/SETPOINTS.md.

Local side: name the extension after its prefix (`usm1`); the default `trusted-extension` role
then lets it write `usm1/**` (the mirror, `usm1/link.up`, `usm1/link.revision`) and control
`usm1/**` setpoints. Local requesters need `request` on `usm1/**/*_set` (the default
untrusted-agent role has it).

Remote side, done by the remote site's operator (`--home` is the remote site's directory):

    smx --home <site> pki issue usm-link --domain trusted  # copy ca.crt, usm-link.crt/.key here

On this box, under `smx run` as root, the extension runs as a user of its own: give it the
copied files (`chown smx-<h>-usm1 usm-link.key`; `smx status` names a file it cannot read).
After a revocation, copy a newly issued pair over the old files: the link takes them up at its
next retry, without a restart.

Then, on the remote, in its policy.local.toml, the operator's file next to policy.toml (which
`smx run` rewrites at every start: an edit there would not last; docs/POLICY.md), to read what
is mirrored and request the forwarded setpoints:

    [[bindings]]
    identity = "spiffe://<remote-site>/trusted/usm-link"
    roles = ["gui"]
    rules = [ { verbs = ["request"], points = ["**/*_set"] } ]

then `smx admin reload`. Written by hand as root, the file must be the core's and 0600 (`smx
policy bind` does this by itself; the core names the chown otherwise). Narrower is fine: `read`
on the mirrored patterns (GetSetpoint, used to follow a forwarded request, needs `read` on the
setpoint point or being its requester) and `request` on the setpoints to forward (e.g.
`ess/P_set`). `smx policy bind usm-link energy-router` also works (it writes policy.local.toml
and reloads a running core itself) but grants more (write/control of `usm-link/**`).

Qualities: kept, except a remote STALE, which is written once as UNCERTAIN (the local core
refuses STALE from writers) and not republished, so it turns STALE locally too.
"""

from __future__ import annotations

import dataclasses
import logging

from extensions.sdk import Extension, SetupError
from smx.client import Credentials
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
