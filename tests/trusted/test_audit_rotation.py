"""Rotation and retention of the audit log: past max_size the file becomes <log>.1 and a new one
continues the hash chain; `keep` rotated files are kept. Queries, verification, tail recovery and
signed checkpoints work across the files; the core.toml keys [audit] max_size and keep."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contract.audit_log import audit_records
from tests.support.site import Site
from trusted.core.audit import AuditLog
from trusted.core.audit_checkpoint import CheckpointSigner, checkpoint_path, verify_log
from trusted.core.audit_reader import page_records, rotated_numbers, verify_chain
from trusted.core.audit_record import GENESIS, AuditError
from trusted.core.config import ConfigError, load_core_config
from trusted.core.server import Core

ROOT = Path(__file__).resolve().parents[2]
BOB = "spiffe://usm-0017/untrusted/lessag"
CORE = "spiffe://usm-0017/trusted/smxcore"


def lines(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "audit.jsonl"


async def started(path: Path, **kw: object) -> AuditLog:
    log = AuditLog(path, fsync_interval=0.05, **kw)  # type: ignore[arg-type]
    await log.start()
    return log


def fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append("setpoint_request", BOB, point=f"p{log.last_seq}", detail={"i": i})


async def test_rotation_continues_the_chain_in_a_new_file(path: Path) -> None:
    log = await started(path, max_bytes=2000, keep=3)
    fill(log, 10)
    before = lines(path)
    await log._tick(time.monotonic())  # past max_bytes: rotated by the background round
    assert files(path) == ["audit.jsonl", "audit.jsonl.1"]
    assert lines(path.with_name("audit.jsonl.1")) == before
    (first,) = lines(path)
    assert first["kind"] == "rotated" and first["identity"] == ""
    assert first["seq"] == 11 and first["prev"] == before[-1]["hash"] != GENESIS
    assert first["detail"] == {"last_seq": 10, "last_hash": before[-1]["hash"], "kept_from_seq": 1}
    fill(log, 3)
    assert lines(path)[-1]["seq"] == 14
    for name in files(path):
        assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600
    assert log.verify() == 14 == verify_chain(path)
    assert [r.seq for r in log.query(limit=100)] == list(range(1, 15))
    await log.close()


async def test_only_keep_files_are_kept_and_the_chain_verifies_from_the_oldest(path: Path) -> None:
    log = await started(path, max_bytes=1500, keep=2)
    for _ in range(5):
        fill(log, 8)
        await log.rotate()
    fill(log, 2)
    await log.close()
    assert files(path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    oldest = lines(path.with_name("audit.jsonl.2"))
    assert oldest[0]["kind"] == "rotated"  # the genesis file was deleted by retention
    kept_from = oldest[0]["seq"]
    assert lines(path)[0]["detail"]["kept_from_seq"] == kept_from
    # Verification starts at the rotated record the oldest file begins with, not at GENESIS.
    assert log.verify() == log.last_seq - kept_from + 1
    assert [r.seq for r in log.query(limit=1000)] == list(range(kept_from, log.last_seq + 1))
    # A kept file deleted by hand is reported: retention would have kept it.
    path.with_name("audit.jsonl.2").unlink()
    with pytest.raises(AuditError, match="a file was deleted"):
        log.verify()


async def test_an_edit_in_a_rotated_file_is_reported_with_its_file(path: Path) -> None:
    log = await started(path, max_bytes=1000)
    fill(log, 6)
    await log.rotate()
    fill(log, 2)
    await log.close()
    rotated = path.with_name("audit.jsonl.1")
    rows = rotated.read_text().splitlines()
    rows[2] = rows[2].replace('"point":"p2"', '"point":"px"')
    rotated.write_text("\n".join(rows) + "\n")
    with pytest.raises(AuditError, match=r"seq 3 \(audit.jsonl.1 line 3\)"):
        log.verify()
    # Dropping the rotated file while the current one names its records: a break too.
    rotated.unlink()
    with pytest.raises(AuditError, match="a file was deleted"):
        log.verify()


async def test_a_restart_after_rotation_continues_seq_and_chain(path: Path) -> None:
    log = await started(path, max_bytes=1000)
    fill(log, 6)
    await log.rotate()
    await log.close()
    log = await started(path, max_bytes=1000)
    assert log.last_seq == 7
    rec = log.append("policy_reload", "")
    await log.close()
    assert rec.seq == 8 and lines(path)[-1]["prev"] == lines(path)[-2]["hash"]
    assert log.verify() == 8


@pytest.mark.parametrize("leftover", ["missing", "empty"])
async def test_a_rotation_cut_short_continues_the_chain_of_the_rotated_file(
    path: Path, leftover: str
) -> None:
    log = await started(path)
    fill(log, 4)
    await log.close()
    # A crash after the rename, before the new file held its first record.
    path.rename(path.with_name("audit.jsonl.1"))
    if leftover == "empty":
        path.touch(mode=0o600)
    log = await started(path)
    assert log.last_seq == 5
    first = lines(path)[0]
    assert first["kind"] == "rotated" and first["detail"]["last_seq"] == 4
    log.append("policy_reload", "")
    await log.close()
    assert log.verify() == 6


async def test_signed_checkpoints_verify_across_a_rotation(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    kw = dict(signer=CheckpointSigner(key), verifier=key.public_key(), identity=CORE)
    log = await started(path, max_bytes=1500, keep=2, **kw)
    fill(log, 10)
    await log.checkpoint()
    cp = json.loads(checkpoint_path(path).read_text())
    await log.rotate()  # the checkpoint file now names a record of audit.jsonl.1
    assert cp["seq"] in {r["seq"] for r in lines(path.with_name("audit.jsonl.1"))}
    report = verify_log(path, key.public_key())
    assert report.records == log.last_seq and report.last_checkpoint == cp["seq"]
    await log._tick(time.monotonic())  # right after a rotation the new file's start is signed
    assert lines(path)[-1]["kind"] == "checkpoint"
    for _ in range(3):
        fill(log, 10)
        await log.rotate()
    await log.close()
    report = verify_log(path, key.public_key())
    assert report.first_seq > 1 and report.last_checkpoint == report.last_seq == log.last_seq
    # A restart verifies the kept files against the checkpoint: no break.
    log = await started(path, max_bytes=1500, keep=2, **kw)
    assert log.query(kind="audit_break") == []
    await log.close()
    # Emptying the current file is still reported, although the rotated ones chain on: the
    # log ends before the checkpoint (and the older rotated record's kept files are gone).
    emptied = path.with_name("emptied")
    path.rename(emptied)
    path.write_bytes(b"")
    log = await started(path, max_bytes=1500, keep=2, **kw)
    (brk,) = log.query(kind="audit_break")  # the start continues .1's chain, but says so
    assert "before the signed checkpoint" in brk.detail["error"]
    await log.close()
    emptied.rename(path)  # as it was, without the start's records
    path.write_bytes(b"")
    with pytest.raises(AuditError, match="before the signed checkpoint|a file was deleted"):
        verify_log(path, key.public_key())
    path.unlink()
    with pytest.raises(AuditError, match="before the signed checkpoint|a file was deleted"):
        verify_log(path, key.public_key())


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(1, 12), min_size=1, max_size=5), data=st.data())
async def test_pages_across_files_match_a_plain_scan(tmp_path_factory, cuts, data) -> None:
    path = tmp_path_factory.mktemp("rot") / "audit.jsonl"
    log = await started(path, keep=10)
    for n in cuts:
        fill(log, n)
        await log.rotate()
    fill(log, 3)
    await log.close()
    last = log.last_seq
    after = data.draw(st.integers(0, last + 1))
    limit = data.draw(st.integers(1, 7))
    records, more = page_records(path, after_seq=after, limit=limit)
    expected = list(range(after + 1, last + 1))
    assert [r.seq for r in records] == expected[:limit]
    assert more == (len(expected) > limit)
    rotated = [r.seq for r in page_records(path, kind="rotated", limit=100)[0]]
    assert len(rotated) == len(cuts) == len(rotated_numbers(path))


def test_the_core_toml_keys(tmp_path: Path) -> None:
    def load(text: str):  # noqa: ANN202
        (tmp_path / "core.toml").write_text(text)
        return load_core_config(tmp_path / "core.toml", home=tmp_path)

    default = load_core_config(None, home=tmp_path)
    assert (default.audit_max_bytes, default.audit_keep) == (64 * 1024**2, 4)
    cfg = load('[audit]\nmax_size = "16MB"\nkeep = 10\n')
    assert (cfg.audit_max_bytes, cfg.audit_keep) == (16 * 1024**2, 10)
    assert load('[audit]\nmax_size = "off"\n').audit_max_bytes is None
    for text, message in (
        ('[audit]\nmax_size = "100KB"\n', "audit.max_size: must be at least 1MB"),
        ('[audit]\nmax_size = "lots"\n', "audit.max_size"),
        ("[audit]\nkeep = 0\n", "audit.keep: must be between 1 and"),
        ("[audit]\nkeep = true\n", "audit.keep: expected an integer"),
        ('[audit]\nmax_sise = "1MB"\n', "did you mean 'max_size'"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(text)


async def test_the_core_pages_and_verifies_across_a_rotation(site: Site) -> None:
    """The real core: ListAuditRecords pages across the files, `smx audit --verify` and the
    next start accept the rotated log."""
    core = Core(site.config())
    await core.start()
    try:
        audit = core.state.audit
        for i in range(30):
            audit.append("policy_reload", CORE, detail={"i": i})
        await audit.rotate()
        for i in range(5):
            audit.append("policy_reload", CORE, detail={"i": 30 + i})
        everything = await audit_records(site.stubs("admin"))
        assert [r.seq for r in everything] == list(range(1, audit.last_seq + 1))
        assert [r.kind for r in everything].count("rotated") == 1
        last = audit.last_seq
    finally:
        await core.stop(grace=0.1)
    path = site.config().audit_path
    assert rotated_numbers(path) == [1]
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(site.home), "audit", "--verify"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("audit log intact: ")
    core = Core(site.config())
    await core.start()
    try:
        assert core.state.audit.query(kind="audit_break") == []
        assert core.state.audit.last_seq > last
    finally:
        await core.stop(grace=0.1)


async def test_the_core_rotates_at_its_configured_size_and_keeps_its_configured_files(
    site: Site,
) -> None:
    """[audit] max_size and keep reach the running core: records written by it past the size
    start a new file, and only `keep` rotated files stay."""
    core = Core(site.config(audit_max_bytes=4096, audit_keep=1))
    await core.start()
    try:
        audit = core.state.audit
        for i in range(200):
            audit.append("policy_reload", CORE, detail={"i": i, "pad": "x" * 40})
            if i % 20 == 0:
                await asyncio.sleep(0.3)  # the writer's task rotates between appends
    finally:
        await core.stop(grace=0.1)
    path = site.config().audit_path
    assert rotated_numbers(path) == [1]
    # Past the size by at most what was appended between two rotation checks.
    assert path.stat().st_size <= 3 * 4096 and (path.parent / f"{path.name}.1").exists()
