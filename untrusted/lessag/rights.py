"""Least privilege: exactly the rights a lessag config needs, as the rules of a policy binding
(docs/POLICY.md format): read the points it publishes and the live points of ESS control,
request the setpoints it drives, write its own state points. docs/LESSAG.md shows
the demo's, and a test checks that the agent works with exactly these."""

from __future__ import annotations

from collections.abc import Callable

from smx.identity import Identity
from smx.names import Glob

from .settings import LessagConfig

__all__ = [
    "STATE_POINTS",
    "binding_toml",
    "missing_rights",
    "needed_rules",
    "read_rules",
    "site_keys",
]

# The agent's own points (besides the SDK's `<name>/ext.state`).
STATE_POINTS = ("mqtt", "queued", "dropped")
# As for every untrusted reader (docs/POLICY.md): billing snapshots are the meter owner's,
# unless a read names them itself. The same split as `smx run`'s (trusted/supervisor/
# provision.py, which untrusted code may not import; a test checks both give the same rules).
BILLING_SNAPSHOTS = "**/*.bill*"
BILLING_SNAPSHOTS_HINT = ".bill"


def needed_rules(cfg: LessagConfig, name: str) -> list[tuple[str, list[str]]]:
    """(verb, patterns) pairs, each pattern once, in the config's order."""
    reads = [f"{d.id}/{p}" for d in cfg.devices for p in d.points]
    requests: list[str] = []
    if cfg.ess.enabled:
        ess = cfg.ess
        reads += [ess.battery_power, ess.pcc_power, ess.soc] + (
            [ess.pv_power] if ess.pv_power else []
        )
        requests.append(ess.setpoint)
    for cp in cfg.ev.charge_points:
        requests += [f"{cp}/I_max_set", f"{cp}/P_max_set"]
    writes = [f"{name}/ext.state"] + [f"{name}/{p}" for p in STATE_POINTS]
    rules = [("read", _covered(reads)), ("request", list(dict.fromkeys(requests)))]
    return [r for r in rules if r[1]] + [("write", writes)]


def site_keys(cfg: LessagConfig, name: str) -> dict[str, str | list[str]]:
    """The keys of the agent's site.toml table that make `smx run` bind it with exactly
    `needed_rules` and no role (docs/SITE.md: `role = "none"`, `reads`, `requests`, `writes`)."""
    rules = dict(needed_rules(cfg, name))
    return {
        "role": "none",
        "reads": rules.get("read", []),
        "requests": rules.get("request", []),
        "writes": rules["write"],
    }


def read_rules(reads: list[str]) -> list[tuple[list[str], list[str]]]:
    """The read rules, (points, except): the broad patterns without the billing snapshots,
    then the patterns that name snapshots themselves in a rule of their own."""
    named = [r for r in reads if BILLING_SNAPSHOTS_HINT in r]
    broad = [r for r in reads if BILLING_SNAPSHOTS_HINT not in r]
    rules: list[tuple[list[str], list[str]]] = []
    if broad:
        rules.append((broad, [BILLING_SNAPSHOTS]))
    if named:
        rules.append((named, []))
    return rules


def _covered(patterns: list[str]) -> list[str]:
    """Each pattern once, leaving out a plain name an earlier pattern of its own rule already
    matches (a named billing snapshot is never folded into a broad pattern: that one excludes
    the snapshots)."""
    kept: list[str] = []
    for p in dict.fromkeys(patterns):
        named = BILLING_SNAPSHOTS_HINT in p
        same = [k for k in kept if (BILLING_SNAPSHOTS_HINT in k) == named]
        if "*" in p or not any(Glob(k).match(p) for k in same):
            kept.append(p)
    return kept


def binding_toml(cfg: LessagConfig, site: str, name: str) -> str:
    """A `[[bindings]]` entry for policy.local.toml granting exactly `needed_rules`, no role."""
    lines = [
        "[[bindings]]",
        f'identity = "{Identity(site, "untrusted", name).uri}"',
        "roles = []",
        f'description = "{name}: exactly what its config publishes and requests"',
        "rules = [",
    ]
    for verb, patterns in needed_rules(cfg, name):
        rules = read_rules(patterns) if verb == "read" else [(patterns, [])]
        for points, keep_out in rules:
            tail = f", except = [{_quoted(keep_out)}]" if keep_out else ""
            lines.append(f'  {{ verbs = ["{verb}"], points = [{_quoted(points)}]{tail} }},')
    lines.append("]")
    return "\n".join(lines) + "\n"


def _quoted(patterns: list[str]) -> str:
    return ", ".join(f'"{p}"' for p in patterns)


def missing_rights(
    cfg: LessagConfig, name: str, may: Callable[[str, str], bool]
) -> list[tuple[str, str]]:
    """(verb, pattern) of `needed_rules` the core does not grant, `may(verb, point)` being the
    core's answer (WhoAmI). A pattern is tried on a name it matches (`smm/*` as `smm/x`): a
    rough check, enough to name a device or setpoint left out of the binding."""
    missing = []
    for verb, patterns in needed_rules(cfg, name):
        for pattern in patterns:
            sample = pattern.replace("**", "x").replace("*", "x")
            if not may(verb, sample):
                missing.append((verb, pattern))
    return missing
