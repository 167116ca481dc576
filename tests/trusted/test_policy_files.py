"""The site's two policy files (docs/POLICY.md, "Two files"): policy.toml and the operator's
policy.local.toml loaded together, what the merge refuses, a core that keeps its policy when a
reload fails, the operator file's mode, and `smx run` moving hand-added bindings out of an
older site's policy.toml before it rewrites it."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import grpc
import pytest

from smx.client import error_reason
from smx.identity import Identity
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import point_service_pb2 as spb
from trusted.core.site_files import check_site
from trusted.policy import Policy, PolicyError, default_policy_text
from trusted.supervisor.site_config import load_site_config

SITE = "usm-0017"
LINK = f"spiffe://{SITE}/trusted/usm-link"

# What a binding added by hand (or by `smx policy bind` before policy.local.toml) looks like.
LINK_BINDING = f"""
[[bindings]]
identity = "{LINK}"
roles = ["gui"]
rules = [ {{ verbs = ["request"], points = ["**/*_set"] }} ]
"""


def ident(name: str) -> Identity:
    return Identity(SITE, "trusted", name)


def write_policy(home: Path, local: str | None = None) -> Path:
    path = home / "policy.toml"
    path.write_text(
        default_policy_text(SITE, [("trusted/admin", ["admin"]), ("trusted/meter", ["gui"])])
    )
    if local is not None:
        (home / "policy.local.toml").write_text(local)
    return path


# --------------------------------------------------------------------------- the merge


def test_bindings_and_roles_of_both_files_make_one_policy(tmp_path):
    local = (
        LINK_BINDING
        + f"""
[roles.ops]
description = "operations"
rules = [ {{ verbs = ["admin"] }} ]

[[bindings]]
identity = "spiffe://{SITE}/trusted/ops"
roles = ["ops"]

[[bindings]]
identity = "spiffe://{SITE}/trusted/meter"
roles = []
rules = [ {{ verbs = ["write"], points = ["meter/**"] }} ]
"""
    )
    policy = Policy.load(write_policy(tmp_path, local))
    assert policy.allows(ident("usm-link"), "read", "smm/P")
    assert policy.allows(ident("usm-link"), "request", "ess/P_set")
    assert policy.allows(ident("ops"), "admin")
    # Bound in both files: the union of both bindings.
    assert policy.allows(ident("meter"), "read", "smm/P")  # gui, from policy.toml
    assert policy.allows(ident("meter"), "write", "meter/P")  # from policy.local.toml
    assert not policy.allows(ident("meter"), "write", "smm/P")
    sources = {(b.identity.rsplit("/", 1)[1], Path(b.source).name) for b in policy.bindings}
    assert sources == {
        ("admin", "policy.toml"),
        ("meter", "policy.toml"),
        ("usm-link", "policy.local.toml"),
        ("ops", "policy.local.toml"),
        ("meter", "policy.local.toml"),
    }
    assert Path(policy.roles["ops"].source).name == "policy.local.toml"
    assert Path(policy.roles["gui"].source).name == "policy.toml"


@pytest.mark.parametrize(
    ("local", "where"),
    [
        ('[roles.gui]\nrules = [ { verbs = ["read"], points = ["**"] } ]\n', "roles.gui"),
        ("[[bindings]\n", ""),  # TOML syntax
        (f'[[bindings]]\nidentity = "{LINK}"\nrole = ["gui"]\n', "bindings[0]"),
        (f'[[bindings]]\nidentity = "{LINK}"\nroles = ["nope"]\n', "bindings[0].roles[0]"),
        (LINK_BINDING + LINK_BINDING, "bindings[1].identity"),
        ('[[bindings]]\nidentity = "spiffe://usm-0017/trusted/"\n', "bindings[0].identity"),
    ],
)
def test_a_bad_operator_file_is_refused_in_one_line_naming_it(tmp_path, local, where):
    with pytest.raises(PolicyError) as info:
        Policy.load(write_policy(tmp_path, local))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'policy.local.toml'}: {where}")
    assert info.value.source == str(tmp_path / "policy.local.toml")
    assert info.value.path == where


def test_a_role_defined_in_both_files_is_refused(tmp_path):
    local = '[roles.gui]\nrules = [ { verbs = ["read"], points = ["**"] } ]\n'
    with pytest.raises(PolicyError, match=r"roles\.gui: already defined in .*policy\.toml"):
        Policy.load(write_policy(tmp_path, local))


async def test_a_reload_refused_for_the_operator_file_keeps_the_policy_in_force(site, core):
    local = site.home / "policy.local.toml"
    nobody = site.stubs("nobody")  # a certificate without a binding
    local.write_text(
        '[[bindings]]\nidentity = "spiffe://test-site/trusted/nobody"\nroles = ["gui"]\n'
    )
    await site.stubs("admin").admin.ReloadPolicy(apb.ReloadPolicyRequest(), timeout=5)
    await nobody.points.ListPoints(spb.ListPointsRequest(), timeout=5)  # in force
    local.write_text('[roles.gui]\nrules = [ { verbs = ["read"], points = ["**"] } ]\n')
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await site.stubs("admin").admin.ReloadPolicy(apb.ReloadPolicyRequest(), timeout=5)
    assert error_reason(info.value) == "POLICY_INVALID"
    assert f"{local}: roles.gui: already defined in" in (info.value.details() or "")
    await nobody.points.ListPoints(spb.ListPointsRequest(), timeout=5)  # still in force


def test_the_core_keeps_the_operator_file_private(tmp_path, caplog):
    home = tmp_path
    os.chmod(home, 0o750)
    local = home / "policy.local.toml"
    local.write_text("")
    os.chmod(local, 0o644)
    with caplog.at_level(logging.WARNING, logger="trusted.core.site_files"):
        check_site(
            home,
            history=home / "data" / "history.db",
            audit=home / "data" / "audit.jsonl",
            policy=home / "policy.toml",
        )
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    assert f"{local}: file mode 0644 let other users in; changed to 0600" in caplog.messages


# --------------------------------------------------------------------------- migration

SITE_TOML = f"""\
site = "{SITE}"
[extensions.meter]
module = "tests.support.dummy_ext"
"""


def old_site(home: Path, hand_added: str) -> Path:
    """A site as an older `smx run` left it (policy.toml without marks), with `hand_added`
    appended to policy.toml by its operator."""
    (home / "site.toml").write_text(SITE_TOML)
    old = default_policy_text(
        SITE,
        [
            ("trusted/admin", ["admin"]),
            ("trusted/supervisor", ["gui"]),
            ("trusted/meter", ["trusted-extension", "gui"]),  # a generated one, edited
        ],
    )
    policy = home / "policy.toml"
    policy.write_text(old + hand_added)
    return policy


def test_smx_run_moves_hand_added_bindings_to_the_operator_file_once(tmp_path, caplog):
    from trusted.supervisor.provision import provision

    hand_added = (
        LINK_BINDING
        + f"""
[roles.ops]
rules = [ {{ verbs = ["admin"] }} ]

[[bindings]]
identity = "spiffe://{SITE}/untrusted/*"
roles = ["ops"]
"""
    )
    policy = old_site(tmp_path, hand_added)
    cfg = load_site_config(tmp_path / "site.toml")
    with caplog.at_level(logging.WARNING, logger="trusted.supervisor.provision"):
        provision(cfg)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        f"{policy}: moved 2 binding(s) smx run does not generate to policy.local.toml, which "
        f"it never rewrites: {LINK}, spiffe://{SITE}/untrusted/*"
    )
    local = tmp_path / "policy.local.toml"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    moved = Policy.load(policy)
    assert [b.identity for b in moved.bindings if b.source == str(local)] == [
        LINK,
        f"spiffe://{SITE}/untrusted/*",
    ]
    assert moved.allows(ident("usm-link"), "request", "ess/P_set")
    assert moved.allows(Identity(SITE, "untrusted", "x"), "admin")  # its role came along
    assert LINK not in policy.read_text() and "[roles.ops]" not in policy.read_text()
    # site.toml's own processes are site.toml's: neither moved nor kept as edited.
    assert not moved.allows(ident("meter"), "read", "smm/P")
    # The next starts find nothing to move, a process taken out of site.toml included (its
    # binding is marked as smx run's): the operator file stays as it is.
    text = local.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trusted.supervisor.provision"):
        provision(cfg)
        (tmp_path / "site.toml").write_text(f'site = "{SITE}"\n')
        provision(load_site_config(tmp_path / "site.toml"))
    assert local.read_bytes() == text
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert not Policy.load(policy).allows(ident("meter"), "read", "meter/P")


def test_a_binding_already_in_the_operator_file_is_not_appended_again(tmp_path):
    from trusted.supervisor.provision import provision

    policy = old_site(tmp_path, LINK_BINDING)
    local = tmp_path / "policy.local.toml"
    local.write_text("# mine\n" + LINK_BINDING)  # moved by a start that stopped before the rewrite
    provision(load_site_config(tmp_path / "site.toml"))
    assert local.read_text() == "# mine\n" + LINK_BINDING
    assert LINK not in policy.read_text()
    assert Policy.load(policy).allows(ident("usm-link"), "read", "smm/P")


def test_an_unreadable_policy_toml_is_not_rewritten(tmp_path):
    from trusted.supervisor.provision import ProvisionError, provision

    policy = old_site(tmp_path, '[[bindings]]\nidentity = "x"\n')
    before = policy.read_text()
    with pytest.raises(
        ProvisionError, match=r"cannot keep the bindings added by hand to policy\.toml"
    ):
        provision(load_site_config(tmp_path / "site.toml"))
    assert policy.read_text() == before
