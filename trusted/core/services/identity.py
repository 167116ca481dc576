"""IdentityService: the caller as the core sees it, for debugging certificates and policy.
Any authenticated caller may ask (its entry in the method table needs no verb)."""

from __future__ import annotations

from smx.timestamps import ms_to_ts
from smx.v1 import identity_service_pb2 as pb
from trusted.core.auth import Caller
from trusted.core.state import CoreState

__all__ = ["IdentityService"]


class IdentityService:
    def __init__(self, state: CoreState) -> None:
        self.s = state

    async def WhoAmI(self, req: pb.WhoAmIRequest, caller: Caller, ctx: object):
        policy, ident = self.s.gate.policy, caller.identity
        return pb.WhoAmIResponse(
            identity=caller.uri,
            site=ident.site,
            domain=ident.domain,
            name=ident.name,
            roles=policy.roles_for(ident),
            rules=[
                pb.Rule(verbs=list(verbs), patterns=list(patterns), except_patterns=list(excluded))
                for (verbs, patterns), excluded in zip(
                    policy.rules_for(ident), policy.exceptions_for(ident), strict=True
                )
            ],
            certificate_serial=f"{caller.peer.serial:x}",
            certificate_expire_time=ms_to_ts(int(caller.peer.not_after * 1000)),
        )
