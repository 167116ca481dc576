"""Billing snapshots in lessag's least-privilege binding (docs/POLICY.md: an untrusted reader
gets no billing snapshot unless a read names one itself).

The attack on the old code: `rights.binding_toml` (the binding by hand, for a core without
`smx run`) dropped `except = ["**/*.bill*"]` from the whole read rule as soon as one read
pattern named a `.bill` snapshot, so a config asking for `meter/Ap.bill03` got every snapshot
of every device read with "*"; and `needed_rules` folded a named snapshot into a broad pattern
of the same device, which then excluded it, so the agent was refused what its config asked for.
The rule: broad patterns in one rule with the exclusion, named snapshots in a rule of their own,
exactly as `smx run` provisions it; lessag may not import trusted code, so the two are checked
here to give the same rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smx.identity import Identity
from smx.sdk import parse_settings
from trusted.policy import Policy
from trusted.supervisor.provision import site_policy_text
from trusted.supervisor.site_config import parse_site_config
from untrusted.lessag.rights import binding_toml, needed_rules, site_keys
from untrusted.lessag.settings import LessagConfig

IDENTITY = "spiffe://s/untrusted/lessag"
SNAPSHOTS = ("meter/Ap.bill03", "meter/Ap.bill01", "smm/Ap.bill01", "smm/Ap_T1.bill07")
CONFIGS: dict[str, dict[str, Any]] = {
    "one snapshot beside a broad device": {
        "devices": [{"id": "smm", "points": ["*"]}, {"id": "meter", "points": ["Ap.bill03"]}],
        "ess": {"enabled": False},
    },
    "a snapshot of a device also read with *": {
        "devices": [{"id": "meter", "points": ["*", "Ap.bill03"]}],
        "ess": {"enabled": False},
    },
    "no snapshot, ESS control": {
        "devices": [{"id": "smm", "points": ["P", "Ap"]}],
        "ess": {"setpoint": "battery/P_set", "battery_power": "battery/P", "soc": "battery/SoC"},
        "ev": {"charge_points": ["ev1"]},
    },
    "snapshots only": {
        "devices": [{"id": "meter", "points": ["Ap.bill*"]}],
        "ess": {"enabled": False},
    },
}


def _config(table: dict[str, Any]) -> LessagConfig:
    return parse_settings(LessagConfig, table)


def _by_hand(cfg: LessagConfig) -> Policy:
    return Policy.from_toml(binding_toml(cfg, "s", "lessag"), "policy.local.toml")


def _readable(policy: Policy, names: tuple[str, ...]) -> list[str]:
    ident = Identity.parse(IDENTITY)
    return [n for n in names if policy.allows(ident, "read", n)]


def test_a_named_snapshot_grants_that_snapshot_and_no_other():
    cfg = _config(CONFIGS["one snapshot beside a broad device"])
    policy = _by_hand(cfg)
    assert _readable(policy, SNAPSHOTS) == ["meter/Ap.bill03"]
    assert _readable(policy, ("smm/P", "smm/Ap", "meter/P")) == ["smm/P", "smm/Ap"]


def test_a_named_snapshot_is_not_folded_into_a_broad_pattern_that_excludes_it():
    cfg = _config(CONFIGS["a snapshot of a device also read with *"])
    assert ("read", ["meter/*", "meter/Ap.bill03"]) in needed_rules(cfg, "lessag")
    assert site_keys(cfg, "lessag")["reads"] == ["meter/*", "meter/Ap.bill03"]
    policy = _by_hand(cfg)
    assert _readable(policy, SNAPSHOTS) == ["meter/Ap.bill03"]
    assert _readable(policy, ("meter/P",)) == ["meter/P"]


def _rules(policy: Policy) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    (binding,) = [b for b in policy.bindings if b.identity == IDENTITY]
    return [(r.verbs, r.points, r.excluded) for r in binding.rules]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_binding_by_hand_has_the_rules_smx_run_provisions(name: str, tmp_path: Path):
    """`binding_toml` (untrusted code) and trusted/supervisor/provision.py's
    `site_policy_text` (what `smx run` binds from `site_keys`) split reads the same way."""
    cfg = _config(CONFIGS[name])
    keys = site_keys(cfg, "lessag")
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    site = f'site = "s"\n[agents.lessag]\nmodule = "untrusted.lessag"\n{table}\n'
    generated = Policy.from_toml(
        site_policy_text(parse_site_config(site, "site.toml", tmp_path)), "policy.toml"
    )
    assert _rules(_by_hand(cfg)) == _rules(generated)
    assert _readable(_by_hand(cfg), SNAPSHOTS) == _readable(generated, SNAPSHOTS)
