"""The core checks the modes of policy.toml and policy.local.toml at start, and a reload
(`smx admin reload`, SIGHUP, and `smx policy bind`, which reloads by itself) must too: an
operator's file that became writable by others after the start (an editor, a `cp`, a umask 000
shell) may already hold a binding another local user gave their own certificate. A reload
refuses such a file, or a symbolic link, and the policy in force stays."""

from __future__ import annotations

import os
import stat

import grpc

from smx.v1 import admin_service_pb2 as apb
from smx.v1 import identity_service_pb2 as ipb
from trusted.policy import local_policy_path

NOBODY = "spiffe://test-site/trusted/nobody"


async def test_a_world_writable_local_policy_is_not_loaded_by_a_reload(site, core):
    local = local_policy_path(site.home / "policy.toml")
    # Written by "another local user" after the core started: a binding of its own to admin.
    local.write_text(f'[[bindings]]\nidentity = "{NOBODY}"\nroles = ["admin"]\n')
    os.chmod(local, 0o666)
    refused = False
    try:
        await site.stubs("admin").admin.ReloadPolicy(apb.ReloadPolicyRequest())
    except grpc.aio.AioRpcError:
        refused = True
    mode = stat.S_IMODE(os.stat(local).st_mode)
    me = await site.stubs("nobody").identity.WhoAmI(ipb.WhoAmIRequest())
    assert refused or not mode & 0o022, (
        f"reload loaded a {mode:04o} policy.local.toml; nobody now has roles {list(me.roles)}"
    )
