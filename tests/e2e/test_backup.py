"""`smx backup` and `smx restore` with a real core: a backup taken while the core writes is a
consistent site that a new core serves (history, audit log with its rotated files and signed
checkpoint, keys, policy, config), restored with its modes; what restore refuses, in one line."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from smx.client import Credentials, Stubs, unix_target
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from trusted.core.audit import AuditLog
from trusted.core.audit_checkpoint import CheckpointSigner
from trusted.core.audit_reader import rotated_numbers

ROOT = Path(__file__).resolve().parents[2]
SITE = "usm-0017"
CORE_ID = f"spiffe://{SITE}/trusted/smxcore"


def smx(*args: str | Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "trusted.cli.main"]
    if home is not None:
        argv += ["--home", str(home)]
    return subprocess.run(
        [*argv, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{r.args[3:]}: {r.stdout}{r.stderr}"
    return r.stdout


def one_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    """A refusal: the exit code, nothing on stdout, one line `smx <command>: ...` on stderr."""
    assert r.returncode == code, r.stdout + r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr.strip()


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="smx-bk-"))  # short: socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_site(home: Path) -> None:
    """A site by hand as in the README, a site file, a core.toml, and an audit log that was
    already rotated twice (signed by the core's key), so the backup has rotated files."""
    ok(smx("pki", "init", "--site", SITE, home=home))
    ok(smx("policy", "init", home=home))
    for name in ("meter", "admin"):
        ok(smx("pki", "issue", name, "--domain", "trusted", home=home))
    ok(smx("policy", "bind", "meter", "trusted-extension", home=home))
    (home / "site.toml").write_text(f'site = "{SITE}"\n')
    (home / "core.toml").write_text('[history]\nflush_interval = "200ms"\n')
    os.chmod(home / "core.toml", 0o640)

    async def rotated_audit() -> None:
        log = AuditLog(
            home / "data" / "audit.jsonl",
            signer=CheckpointSigner.from_pem_file(home / "pki" / "server" / "smxcore.key"),
            identity=CORE_ID,
            max_bytes=1500,
            keep=4,
            fsync_interval=0.05,
        )
        await log.start()
        for _ in range(2):
            for i in range(8):
                log.append("setpoint_request", f"spiffe://{SITE}/trusted/meter", point=f"p{i}")
            await log._tick(time.monotonic())  # past max_bytes: rotated
        await log.close()

    asyncio.run(rotated_audit())
    assert rotated_numbers(home / "data" / "audit.jsonl") == [1, 2]


class Core:
    """`smx core` on a home, as its own process."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log = home.parent / f"{home.name}-core.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trusted.cli.main", "--home", str(home), "core"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        deadline = time.monotonic() + 20
        while "smxcore ready" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stubs(self, name: str) -> Stubs:
        creds = Credentials.from_site(self.home, name)
        return Stubs(creds.channel(unix_target(self.home / "core.sock")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


@pytest.fixture
def cores() -> Iterator[list[Core]]:
    started: list[Core] = []
    yield started
    for core in started:
        with contextlib.suppress(Exception):
            core.stop()
        if core.proc.poll() is None:
            core.proc.kill()
            core.proc.wait(10)


BASE_MS = int(time.time() * 1000) - 3_600_000  # an hour ago: inside retention and the horizon


def write(stubs: Stubs, i: int) -> None:
    sample = ppb.PointSample(name="meter/P", value=ppb.Value(double_value=float(i)))
    sample.source_time.FromMilliseconds(BASE_MS + i)
    stubs.points.WritePoints(spb.WritePointsRequest(samples=[sample]))


def history(stubs: Stubs) -> list[int]:
    start = Timestamp()
    start.FromMilliseconds(0)
    return [
        int(s.value.double_value)
        for chunk in stubs.points.ReadHistory(
            spb.ReadHistoryRequest(names=["meter/P"], start_time=start)
        )
        for s in chunk.samples
    ]


def files_of(home: Path) -> dict[str, int]:
    """Relative path -> mode of every file and directory of a home."""
    out = {}
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            path = Path(root, name)
            out[str(path.relative_to(home))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_backup_while_the_core_writes_restores_a_site_a_new_core_serves(tmp, cores):
    a, b = tmp / "a", tmp / "b"
    make_site(a)
    cores.append(core_a := Core(a))
    meter = core_a.stubs("meter")
    for i in range(50):
        write(meter, i)
    time.sleep(0.8)  # past a flush interval (200 ms): these 50 are in the database

    # The backup runs while a client keeps writing (the core flushes every 200 ms meanwhile).
    stop, written = threading.Event(), [50]

    def keep_writing() -> None:
        stubs = core_a.stubs("meter")
        while not stop.is_set():
            write(stubs, written[0])
            written[0] += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        time.sleep(0.3)
        archive = tmp / "site.tar.gz"
        out = ok(smx("backup", archive, home=a))
    finally:
        stop.set()
        writer.join(10)
    assert written[0] > 60, "the client did not write during the backup"
    assert f"backup of site {SITE} written to {archive} (mode 0600" in out
    assert "history" in out and "consistent copy" in out and "3 file(s), verified" in out
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "smx-backup.json" and names[1] == "site.toml"
    assert names[-1] == "smx-backup.sha256"
    for name in (
        "home/pki/ca.key",
        "home/pki/ca.crt",
        "home/pki/index.json",
        "home/pki/crl.pem",
        "home/pki/server/smxcore.key",
        "home/pki/clients/meter.key",
        "home/policy.toml",
        "home/policy.local.toml",  # `smx policy bind` wrote it
        "home/core.toml",
        "home/data/history.db",
        "home/data/crl.number",
        "home/data/audit.jsonl",
        "home/data/audit.jsonl.1",
        "home/data/audit.jsonl.2",
        "home/data/audit.checkpoint",
    ):
        assert name in names
    # What belongs to the running processes stays out: the WAL (inside the copy), socket, run/.
    assert not [n for n in names if n.endswith(("-wal", "-shm")) or "/run" in n or "sock" in n]

    out = ok(smx("restore", archive, home=b))
    assert f"site {SITE} (backed up " in out and f"restored into {b}" in out
    # Every file and directory of the backup, with the mode it had.
    restored, original = files_of(b), files_of(a)
    in_home = {n[len("home/") :] for n in names if n.startswith("home/")}
    assert set(restored) == in_home | {"site.toml"}
    assert {p: original[p] for p in restored} == restored
    for p in (
        "pki/ca.key",
        "pki/server/smxcore.crt",
        "policy.toml",
        "policy.local.toml",
        "core.toml",
        "site.toml",
    ):
        assert (b / p).read_bytes() == (a / p).read_bytes()
    assert restored["data"] == 0o700 and restored["pki/ca.key"] == 0o600
    assert restored["core.toml"] == 0o640

    # A core on the restored home serves the history as it was at one moment of the backup.
    cores.append(core_b := Core(b))
    kept = history(core_b.stubs("admin"))
    assert kept[:50] == list(range(50))
    assert kept == list(range(len(kept))), "the copy is not one moment of the history"
    assert len(kept) <= written[0]
    core_b.stop()
    verify = ok(smx("audit", "--verify", home=b))
    assert verify.startswith("audit log intact:") and "signatures valid" in verify
    assert rotated_numbers(b / "data" / "audit.jsonl") == [1, 2]


def test_a_stopped_site_is_backed_up_without_leaving_files_and_a_torn_record_is_cut(tmp, cores):
    a, b = tmp / "a", tmp / "b"
    make_site(a)
    cores.append(core := Core(a))
    for i in range(5):
        write(core.stubs("meter"), i)
    core.stop()
    with open(a / "data" / "audit.jsonl", "ab") as f:
        f.write(b'{"seq": 999, "kind": "wr')  # a record cut by a power loss
    before = sorted(os.listdir(a / "data"))
    out = ok(smx("backup", tmp / "x.tar.gz", home=a))
    assert "verified" in out
    assert sorted(os.listdir(a / "data")) == before  # no -wal or -shm left behind
    ok(smx("restore", tmp / "x.tar.gz", home=b))
    assert ok(smx("audit", "--verify", home=b)).startswith("audit log intact:")
    assert not (b / "data" / "audit.jsonl").read_bytes().endswith(b'"wr')
    cores.append(core_b := Core(b))
    assert history(core_b.stubs("admin")) == list(range(5))
    # Into a directory: the default name; never over an archive without --force, never inside
    # the home it saves.
    ok(smx("backup", tmp, home=a))
    (named,) = tmp.glob(f"smx-backup-{SITE}-*.tar.gz")
    assert stat.S_IMODE(named.stat().st_mode) == 0o600
    line = one_line(smx("backup", tmp / "x.tar.gz", home=a), 2)
    assert line.startswith("smx backup: ") and "exists" in line and "--force" in line
    assert "inside the site home" in one_line(smx("backup", a / "x.tar.gz", home=a), 2)
    ok(smx("backup", tmp / "x.tar.gz", "--force", home=a))


@pytest.fixture
def backed_up(tmp: Path, cores: list[Core]) -> tuple[Path, Path]:
    """(a running site's home, a backup of it)."""
    a = tmp / "a"
    make_site(a)
    cores.append(Core(a))
    ok(smx("backup", tmp / "site.tar.gz", home=a))
    return a, tmp / "site.tar.gz"


def test_restore_refuses_what_it_must_in_one_line(tmp, backed_up):
    a, archive = backed_up
    before = files_of(a)
    # A home a core runs on, even with --force.
    line = one_line(smx("restore", archive, "--force", home=a), 1)
    assert line.startswith("smx restore: a core (pid ") and "stop it before restoring" in line
    # A home a supervisor runs (its lock is held).
    c = tmp / "c"
    (c / "run").mkdir(parents=True)
    with open(c / "run" / "supervisor.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        line = one_line(smx("restore", archive, "--force", home=c), 1)
    assert "a supervisor (pid 4242) runs the site" in line
    # A home that is not empty, without --force.
    line = one_line(smx("restore", archive, home=c), 2)
    assert f"{c} is not empty (run)" in line and "--force" in line
    # Not a backup, a damaged one, a hostile one: nothing is written.
    d = tmp / "d"
    (tmp / "notes.txt").write_text("hello")
    assert "is not a tar.gz archive" in one_line(smx("restore", tmp / "notes.txt", home=d), 2)
    plain = tmp / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        tar.add(tmp / "notes.txt", "notes.txt")
    assert "is not a backup `smx backup` wrote" in one_line(smx("restore", plain, home=d), 2)
    cut = tmp / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "damaged archive" in one_line(smx("restore", cut, home=d), 2)
    hostile = tmp / "hostile.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(hostile, "w:gz") as tar:
        manifest = src.extractfile("smx-backup.json").read()
        info = tarfile.TarInfo("smx-backup.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        evil = tarfile.TarInfo("home/../../evil")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    line = one_line(smx("restore", hostile, home=d), 2)
    assert "'home/../../evil'" in line and "nothing was restored" in line
    assert not d.exists() and not (tmp / "evil").exists()
    assert files_of(a) == before  # the running site was not touched
    assert not (tmp / "missing.tar.gz").exists()
    assert "no such file" in one_line(smx("restore", tmp / "missing.tar.gz", home=d), 2)


def test_force_moves_the_replaced_files_aside_and_the_site_file_can_go_elsewhere(tmp, backed_up):
    _, archive = backed_up
    c = tmp / "c"
    (c / "data").mkdir(parents=True)
    (c / "data" / "history.db-wal").write_bytes(b"a WAL of another database")
    (c / "policy.toml").write_text("old")
    etc = tmp / "etc"
    r = smx("restore", archive, "--force", "--config", etc / "site.toml", home=c)
    out = ok(r)
    assert "the files it replaced are in" in out and f"site file {etc / 'site.toml'}" in out
    (replaced,) = c.glob("replaced-*")
    assert (replaced / "data" / "history.db-wal").exists()
    assert (replaced / "policy.toml").read_text() == "old"
    assert not (c / "data" / "history.db-wal").exists()
    assert (c / "policy.toml").read_text() != "old"
    # The site file names no home, so its home is its own directory: said on one warning line.
    assert r.stderr.startswith("smx restore: warning: ") and len(r.stderr.splitlines()) == 1
    assert f"names no home, so its home is its directory, {etc}, not {c}" in r.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("smx-backup.json"))
    assert manifest["format"] == "smx-backup" and manifest["site"] == SITE
