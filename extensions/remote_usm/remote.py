"""The link to the REMOTE core: an SDK client of its own, with the remote site's CA and the
client certificate the remote operator issued to this link (the extension's own client is the
local core's).

The client reconnects by itself; whether the remote counts as up is decided by the mirror's
watch, which sets `up`. When the remote refuses the link, `renew_if_replaced` starts a new
client if the operator has put new certificate files in place meanwhile (no restart needed).
"""

from __future__ import annotations

import asyncio

import grpc

from smx.client import Stubs, describe_error, error_reason
from smx.sdk import Client, Credentials

__all__ = ["RemoteLink", "explain"]


class RemoteLink:
    def __init__(self, target: str, credentials: Credentials) -> None:
        self.target = target
        self.credentials = credentials
        self.client = Client(target, credentials)
        self.up = asyncio.Event()
        self.identity = ""  # our identity as the remote core sees it (WhoAmI)
        self.ever_up = False  # data came through once in this run
        self._files = _stamps(credentials)

    @property
    def stubs(self) -> Stubs:
        return self.client.stubs

    async def start(self) -> None:
        await self.client.start()

    async def renew_if_replaced(self) -> bool:
        """A new client when the certificate, key or CA files changed since this one was made
        (a re-issued link certificate copied over the revoked one)."""
        stamps = _stamps(self.credentials)
        if stamps == self._files:
            return False
        self._files = stamps
        old, self.client = self.client, Client(self.target, self.credentials)
        await old.close()
        await self.client.start()
        return True

    async def close(self) -> None:
        await self.client.close()


def _stamps(credentials: Credentials) -> tuple[tuple[int, int], ...]:
    out = []
    for path in (credentials.ca, credentials.cert, credentials.key):
        try:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0))
    return tuple(out)


# A link retried this many times with "Socket closed" during its handshake, never having been up
# in this run, is refused by the remote, not cut by the network.
CLOSED_IN_HANDSHAKE_TRIES = 3


def explain(err: grpc.aio.AioRpcError, link: RemoteLink, failures: int) -> tuple[str, bool]:
    """One line for the log and `smx status` saying what is wrong and what to do, and whether
    the remote refuses this link (a person must act) rather than being out of reach."""
    details = err.details() or ""
    reason = error_reason(err)
    creds = link.credentials
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"the remote's server certificate is not signed by remote_ca {creds.ca}: remote_ca "
            "must be the remote site's CA certificate (its pki/ca.crt)",
            True,
        )
    if reason == "CERTIFICATE_REVOKED":
        return (
            f"the remote USM revoked this link's certificate {creds.cert}: its operator issues "
            "a new one (`smx pki issue usm-link --domain trusted`), put it in remote_cert/key",
            True,
        )
    if err.code() == grpc.StatusCode.UNAUTHENTICATED:
        return f"the remote USM refuses this link's certificate: {describe_error(err)}", True
    if err.code() == grpc.StatusCode.PERMISSION_DENIED:
        who = link.identity or f"the identity in {creds.cert}"
        name = link.identity.rsplit("/", 1)[-1] if link.identity else "usm-link"
        return (
            f"the remote USM's policy does not let {who} do this ({describe_error(err)}): its "
            f"operator binds it (`smx policy bind {name} gui --domain trusted` on the remote)",
            True,
        )
    if "Socket closed" in details and not link.ever_up:
        refused = failures + 1 >= CLOSED_IN_HANDSHAKE_TRIES
        return (
            "the remote closed the connection during the TLS handshake: if this goes on, "
            f"remote_cert {creds.cert} is not issued by the remote site's CA (its operator "
            "issues one: `smx pki issue usm-link --domain trusted`)",
            refused,
        )
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from the remote at {link.target} (network down, or it stopped)", False
    if "Connection refused" in details:
        return f"nothing listens at {link.target} (is the remote core's [core] tcp set?)", False
    return describe_error(err), False  # anything else: the network or the remote, retried
