# ruff: noqa: F811 - the fixtures imported from the backup tests are parameters here
"""Attacks on `smx backup` / `smx restore` (run as root on a site whose data/ the core's user
owns): an archive choosing where root writes, a link in data/ making root copy a file it should
not, modes from an archive giving the world write or set-id bits, and escapes in what the CLI
prints."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

from smx.terminal import printable
from tests.e2e.test_backup import (  # noqa: F401 - fixtures
    backed_up,
    cores,
    make_site,
    ok,
    one_line,
    smx,
    tmp,
)


def test_restore_never_takes_the_home_from_the_archive(tmp, backed_up):
    _, archive = backed_up
    elsewhere = tmp / "elsewhere"
    line = one_line(smx("restore", archive, "--config", elsewhere / "site.toml"), 2)
    assert "give the home to restore into with --home" in line
    assert not elsewhere.exists()


def test_backup_never_copies_through_a_link_in_data(tmp):
    a = tmp / "a"
    make_site(a)
    secret = tmp / "secret"
    secret.write_text("TOP-SECRET root-only\n")
    os.chmod(secret, 0o600)
    rotated = a / "data" / "audit.jsonl.2"
    rotated.unlink()
    rotated.symlink_to(secret)  # what the core's user can do in its data/
    r = smx("backup", tmp / "x.tar.gz", home=a)
    assert "Traceback" not in r.stderr
    if (tmp / "x.tar.gz").exists():
        assert b"TOP-SECRET" not in gzip.decompress((tmp / "x.tar.gz").read_bytes())
    else:
        assert r.returncode != 0 and "audit.jsonl.2" in r.stderr


def test_restored_modes_never_give_the_world_write_or_set_id_bits(tmp, backed_up):
    _, archive = backed_up
    loose = tmp / "loose.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(loose, "w:gz") as out:
        for member in src:
            data = src.extractfile(member).read() if member.isreg() else None
            if member.isdir():
                member.mode = 0o7777
            elif member.isreg():
                member.mode = 0o6777
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    c = tmp / "c"
    ok(smx("restore", loose, home=c))
    for root, dirs, files in os.walk(c):
        for name in [".", *dirs, *files]:
            mode = stat.S_IMODE(os.lstat(Path(root) / name).st_mode)
            assert mode & 0o7022 == 0, (Path(root) / name, oct(mode))


def test_what_others_wrote_reaches_the_terminal_escaped():
    hostile = "meter/P\x1b]0;OWNED\x07\x1b[2J\u202e\x9b"
    shown = printable(hostile)
    assert shown.startswith("meter/P") and all(ch.isprintable() for ch in shown)
    assert "\\x1b" in shown and "\\u202e" in shown and "\\x9b" in shown
