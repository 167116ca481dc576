"""A stream from the core that resumes where it left off: after a reconnect it asks for what
came after the last revision it delivered, and starts over from a snapshot when the core cannot
resume (it restarted, or we were away longer than it keeps changes)."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod

import grpc

from smx.client import describe_error, error_reason

from .link import CoreLink

__all__ = ["ResumableStream"]

log = logging.getLogger(__name__)

REFUSED_RETRY_S = 5.0  # first retry after a refusal; doubled up to REFUSED_RETRY_MAX_S
REFUSED_RETRY_MAX_S = 60.0
# What a refusal for want of rights asks of the operator, per stream.
RIGHTS_HINT = (
    "the policy does not grant it: for a process of site.toml, add the points to its `reads` "
    "or `requests` (docs/SITE.md), or bind a role with `smx policy bind` (docs/POLICY.md)"
)


class ResumableStream(ABC):
    def __init__(self, link: CoreLink, what: str) -> None:
        self.link = link
        self.what = what  # for the logs: "watch of ['smm/P']"
        self.revision = 0  # everything up to here was delivered

    async def run(self) -> None:
        delay, said = REFUSED_RETRY_S, ""
        while True:
            await self.link.connected.wait()
            try:
                await self.follow()
            except grpc.aio.AioRpcError as err:
                if error_reason(err) == "REVISION_COMPACTED" or (
                    err.code() == grpc.StatusCode.INVALID_ARGUMENT and self.revision
                ):
                    log.info("%s cannot resume from %d: new snapshot", self.what, self.revision)
                    self.revision = 0
                elif not self.link.lost_on(err):
                    # Said once per cause, then retried ever more slowly: the operator may fix
                    # the policy without a restart.
                    line = describe_error(err)
                    if line != said:
                        hint = (
                            f"; {RIGHTS_HINT}"
                            if error_reason(err) == "PERMISSION_NOT_GRANTED"
                            else ""
                        )
                        log.error("%s refused: %s%s", self.what, line, hint)
                        said, delay = line, REFUSED_RETRY_S
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, REFUSED_RETRY_MAX_S)
                    continue
            delay, said = REFUSED_RETRY_S, ""

    @abstractmethod
    async def follow(self) -> None:
        """Open the stream from `self.revision`, deliver, advance `self.revision`."""
