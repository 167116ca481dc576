"""Signed checkpoints make truncation, emptying and re-hashing of the audit log detectable,
by `smx audit --verify` and by the core at start (an ``audit_break`` record; it keeps serving)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.site import Site
from trusted.core.audit_checkpoint import (
    CheckpointSigner,
    checkpoint_path,
    read_checkpoint_file,
    write_checkpoint_file,
)
from trusted.core.audit_record import record_hash
from trusted.core.server import Core

ROOT = Path(__file__).resolve().parents[2]


def smx_verify(home: Path) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(home), "audit", "--verify"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    return r.returncode, r.stdout + r.stderr


async def run_core(site: Site, records: int = 0) -> list:
    """Start the core, append ``records`` records, stop it cleanly; its audit_break records."""
    core = Core(site.config())
    await core.start()
    try:
        breaks = core.state.audit.query(kind="audit_break")
        for i in range(records):
            core.state.audit.append(
                "policy_reload", "spiffe://test-site/trusted/admin", detail={"i": i}
            )
    finally:
        await core.stop(grace=0.1)
    return breaks


def lines(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def write_lines(path: Path, objs: list[dict]) -> None:
    path.write_bytes(b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objs))


def rehash_from(objs: list[dict], index: int, signer: CheckpointSigner | None = None) -> None:
    """Fix the chain from ``objs[index]`` on, as an attacker without the core's key would (or
    re-signing checkpoints with ``signer``, their own key)."""
    prev = objs[index - 1]["hash"] if index else "0" * 64
    for o in objs[index:]:
        o["prev"] = prev
        if o["kind"] == "checkpoint":
            o["detail"]["covers_hash"] = prev
            if signer is not None:
                o["detail"]["sig"] = signer.sign(o["seq"] - 1, prev)
        body = {k: v for k, v in o.items() if k != "hash"}
        o["hash"] = prev = record_hash(body)


def truncate_tail(site: Site) -> None:
    path = site.config().audit_path
    write_lines(path, lines(path)[:-3])


def empty(site: Site) -> None:
    site.config().audit_path.write_bytes(b"")


def edit_and_rehash(site: Site) -> None:
    path = site.config().audit_path
    objs = lines(path)
    objs[1]["detail"] = {"i": "forged"}
    rehash_from(objs, 1)
    write_lines(path, objs)
    last = objs[-1]
    cp = checkpoint_path(path)
    old = read_checkpoint_file(cp)
    assert old is not None
    # The attacker also points the checkpoint file at the new tail, keeping the old signature.
    cp.write_text(json.dumps({"seq": last["seq"], "hash": last["hash"], "sig": old.sig}))


def delete_checkpoint(site: Site) -> None:
    checkpoint_path(site.config().audit_path).unlink()


def forged_key(site: Site) -> None:
    path = site.config().audit_path
    signer = CheckpointSigner(ec.generate_private_key(ec.SECP256R1()))
    objs = lines(path)
    objs[1]["detail"] = {"i": "forged"}
    rehash_from(objs, 1, signer)
    write_lines(path, objs)
    write_checkpoint_file(checkpoint_path(path), signer, objs[-1]["seq"], objs[-1]["hash"])


async def test_intact_log_passes(site: Site):
    assert await run_core(site, records=5) == []
    assert await run_core(site, records=2) == []
    code, out = smx_verify(site.home)
    assert code == 0, out
    # Every record, the core's own write summaries and the checkpoint of the clean stop last.
    n = len(lines(site.config().audit_path))
    assert out.startswith(f"audit log intact: {n} records, last signed checkpoint at seq {n} ")
    assert "hash chain intact" in out
    assert os.stat(checkpoint_path(site.config().audit_path)).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "tamper",
    [truncate_tail, empty, edit_and_rehash, delete_checkpoint, forged_key],
)
async def test_tampering_is_detected(site: Site, tamper: Callable[[Site], None]):
    await run_core(site, records=5)
    await run_core(site, records=3)
    assert smx_verify(site.home)[0] == 0
    tamper(site)
    code, out = smx_verify(site.home)
    assert code == 1, out
    assert out.startswith("audit log BROKEN: ")
    assert len(out.strip().splitlines()) == 1
    breaks = await run_core(site)
    assert len(breaks) == 1, breaks
    assert breaks[0].reason == "AUDIT_CHAIN_BROKEN" and breaks[0].detail["error"]


async def test_core_keeps_serving_after_a_break(site: Site):
    await run_core(site, records=3)
    empty(site)
    core = Core(site.config())
    await core.start()
    try:
        # The break, then the start's checkpoint signing it.
        assert [r.kind for r in core.state.audit.query()] == ["audit_break", "checkpoint"]
        core.state.audit.append("policy_reload", "x")
    finally:
        await core.stop(grace=0.1)
    # The break is now itself part of a signed log.
    code, out = smx_verify(site.home)
    assert code == 0, out
    assert "1 earlier break(s) recorded as audit_break" in out
