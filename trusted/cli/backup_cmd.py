"""`smx backup` and `smx restore`: a site in one private tar.gz, and back into an empty home.

What a backup holds (docs/DEPLOY.md, "Backup, restore and upgrade"): the site's PKI (CA key and
certificate, the core's and every client's keys and certificates, the CRL, the CA's ledger),
``policy.toml`` and the operator's ``policy.local.toml``, ``core.toml``, the site file, the
history database and the audit log with its rotated files and its signed checkpoint, and
``crl.number``. Not the run directory (pids, health
files, logs) nor the socket: they belong to the processes running now.

The archive, in this order (restore reads it as a stream):

- ``smx-backup.json``: the manifest (format, version, site, when, from where);
- ``site.toml``: the site file, when there is one (first, so that restore knows the home it names
  before it writes anything);
- ``home/...``: the site home's files, by their path in the home, with their modes;
- ``smx-backup.sha256``: the SHA-256 of every file, checked by restore before anything is moved
  into place.

Consistency while the core runs: the history's recent-samples segment is copied first, then the
database with SQLite's online backup API in one step (one read transaction: the copy is the
database as it was at one moment, the write-ahead log included, while the core keeps writing).
The audit log's checkpoint file is read before the log, whose files are opened together (a
rotation meanwhile neither skips nor repeats one), and a record being written as it is read is
cut off; the copy is then verified like `smx audit --verify`, and
taken again if a rotation raced it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import sys
import tarfile
import tempfile
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from smx.cli.connect import require_site, site_home
from smx.cli.errors import EXIT_FAILED, CliError
from smx.identity import SERVER_NAME
from smx.process_env import RunPaths
from trusted.core.audit_checkpoint import checkpoint_path, load_verifier, verify_log
from trusted.core.audit_reader import log_files
from trusted.core.audit_record import AuditError
from trusted.core.config import ConfigError, CoreConfig, load_core_config
from trusted.pki import PkiError, SiteCA
from trusted.policy import local_policy_path

__all__ = ["FORMAT", "VERSION", "register"]

FORMAT = "smx-backup"
VERSION = 1
MANIFEST = "smx-backup.json"
CHECKSUMS = "smx-backup.sha256"
SITE_FILE = "site.toml"
HOME = "home"
ARCHIVE_MODE = 0o600
# The manifest, the checksums and the site file are read into memory: a bound on what is read.
SMALL_FILE_MAX = 4 * 1024 * 1024
# gzip level: 6 is zlib's default, several times faster than tarfile's 9 on a Raspberry Pi.
COMPRESSION = 6
# Attempts at a copy of the audit log that verifies (a rotation can race a copy).
AUDIT_ATTEMPTS = 3
PRIVATE = "the site's files are private: run as root, or as the user who owns them"


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "backup",
        help="write the site's keys, certificates, policy, config, history and audit to a tar.gz",
        description="Write one tar.gz (mode 0600: it holds the CA key) with everything needed to "
        "rebuild the site: pki/, policy.toml, policy.local.toml, core.toml, the site file, the "
        "history (a consistent copy, also while the core runs) and the audit log with its "
        "rotated files and checkpoint. "
        "`smx restore` puts it back. See docs/DEPLOY.md.",
    )
    b.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="the archive to write, or a directory to write it in (default: "
        "smx-backup-SITE-YYYYMMDDTHHMMSSZ.tar.gz in the working directory)",
    )
    # SUPPRESS: an absent sub-command option must not reset a global `smx --home H backup`.
    b.add_argument(
        "--home", default=argparse.SUPPRESS, help="site home (default: $SMX_HOME or ./site)"
    )
    b.add_argument(
        "--config",
        type=Path,
        help="the site file to include (default: <home>/site.toml if any); without --home, "
        "the home it names is backed up",
    )
    b.add_argument("--force", action="store_true", help="replace the archive if it exists")
    b.set_defaults(func=backup)

    r = sub.add_parser(
        "restore",
        help="restore a site from `smx backup` into an empty home",
        description="Restore the files of a `smx backup` archive into an empty (or new) site "
        "home, with their modes. Refused while a core or a supervisor runs on that home, and "
        "into a home that is not empty unless --force is given.",
    )
    r.add_argument("file", type=Path, help="the archive `smx backup` wrote")
    r.add_argument(
        "--home", default=argparse.SUPPRESS, help="site home (default: $SMX_HOME or ./site)"
    )
    r.add_argument(
        "--config",
        type=Path,
        help="where to write the site file (default: <home>/site.toml); without --home, the "
        "home is the one this site file names",
    )
    r.add_argument(
        "--force",
        action="store_true",
        help="restore into a home that is not empty: the files the backup replaces are moved "
        "to <home>/replaced-TIME/, never deleted",
    )
    r.set_defaults(func=restore)


# --------------------------------------------------------------------------- shared


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _home_named_by(site_file: Path, text: str) -> Path:
    """The home a site file names (docs/SITE.md): its `home`, relative to its directory, or
    that directory. Only that key is read: a backup or a restore must not depend on the rest."""
    base = site_file.resolve().parent
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as err:
        raise CliError(f"{site_file}: invalid TOML: {err}") from None
    home = data.get("home")
    if home is None:
        return base
    if not isinstance(home, str) or not home:
        raise CliError(f"{site_file}: home: expected a path")
    return Path(base, os.path.expanduser(home)).resolve()


def _read_small(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(SMALL_FILE_MAX + 1)
    except PermissionError:
        raise CliError(f"cannot read {what} {path}: permission denied ({PRIVATE})") from None
    except OSError as err:
        raise CliError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > SMALL_FILE_MAX:
        raise CliError(f"{what} {path} is larger than {SMALL_FILE_MAX // 1024 // 1024} MB")
    return data


def _core_config(home: Path) -> CoreConfig:
    path = home / "core.toml"
    try:
        return load_core_config(path if path.exists() else None, home=home)
    except ConfigError as err:
        raise CliError(str(err)) from None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- backup


@dataclass
class _Staged:
    """Files copied into a private staging directory, as they will be archived."""

    root: Path  # the staging directory; files under root/home/..., the site file root/site.toml
    entries: list[tuple[str, int, bool]] = field(default_factory=list)  # (arcname, mode, is_dir)
    notes: list[str] = field(default_factory=list)

    def path(self, arcname: str) -> Path:
        return self.root / arcname

    def add_dir(self, arcname: str, mode: int) -> None:
        self.path(arcname).mkdir(mode=0o700, parents=True, exist_ok=True)
        if not any(a == arcname for a, _, _ in self.entries):
            self.entries.append((arcname, mode, True))

    def add_file(self, arcname: str, mode: int) -> Path:
        self.entries.append((arcname, mode, False))
        return self.path(arcname)


def _open_source(path: Path) -> tuple[IO[bytes], os.stat_result] | None:
    """``path`` opened for reading, without following a link, and its status; None when it is
    missing or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise CliError(f"cannot read {path}: permission denied ({PRIVATE})") from None
    except OSError as err:
        if err.errno == getattr(os, "ELOOP", -1):
            return None  # a link: nothing the site keeps is one
        raise CliError(f"cannot read {path}: {err.strerror or err}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), st


def _copy_file(staged: _Staged, source: Path, arcname: str) -> bool:
    opened = _open_source(source)
    if opened is None:
        return False
    f, st = opened
    with f, open(staged.add_file(arcname, stat.S_IMODE(st.st_mode)), "wb") as out:
        shutil.copyfileobj(f, out, 1024 * 1024)
    return True


def _dir_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except PermissionError:
        raise CliError(f"cannot read {path}: permission denied ({PRIVATE})") from None
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}") from None


def _arcname(home: Path, path: Path, what: str) -> str:
    """``home/<path relative to the home>``; a path outside the home is refused."""
    try:
        rel = path.resolve().relative_to(home)
    except ValueError:
        raise CliError(
            f"{what} {path} is outside the site home {home}: `smx backup` saves a site whose "
            "files live in its home; copy it yourself, or move it into the home (core.toml)"
        ) from None
    return str(PurePosixPath(HOME, *rel.parts))


def _add_parents(staged: _Staged, home: Path, arcname: str) -> None:
    """The directories leading to ``arcname``, each with the mode it has in the home."""
    parts = PurePosixPath(arcname).parts[1:-1]
    for i in range(1, len(parts) + 1):
        staged.add_dir(str(PurePosixPath(HOME, *parts[:i])), _dir_mode(home.joinpath(*parts[:i])))


def _stage_tree(staged: _Staged, home: Path, top: Path) -> None:
    """Every regular file under ``top`` (dot files excepted: locks and temp files)."""
    base = _arcname(home, top, "directory")
    _add_parents(staged, home, base)
    staged.add_dir(base, _dir_mode(top))
    for root, dirs, files in os.walk(top, onerror=_walk_error):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not (Path(root, d)).is_symlink()
        )
        for d in dirs:
            path = Path(root, d)
            staged.add_dir(_arcname(home, path, "directory"), _dir_mode(path))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(root, name)
                _copy_file(staged, path, _arcname(home, path, "file"))


def _walk_error(err: OSError) -> None:
    if isinstance(err, PermissionError):
        raise CliError(f"cannot read {err.filename}: permission denied ({PRIVATE})")
    raise CliError(f"cannot read {err.filename}: {err.strerror or err}")


def _copy_history(staged: _Staged, home: Path, db: Path) -> int | None:
    """A consistent copy of the history database (SQLite's online backup, in one step: one read
    transaction, the write-ahead log included); its size, or None when there is none yet."""
    try:
        st = os.stat(db)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise CliError(f"cannot read {db}: permission denied ({PRIVATE})") from None
    arcname = _arcname(home, db, "history")
    _add_parents(staged, home, arcname)
    # The recent-samples segment first, the database after: a compaction in between only
    # makes the copied segment obsolete (its samples are then in the database copy), and a
    # record being written as it is read fails its checksum and is dropped at start.
    segment = db.with_name(db.name + "-seg")
    if segment.exists():
        _copy_file(staged, segment, _arcname(home, segment, "history"))
    target = staged.add_file(arcname, stat.S_IMODE(st.st_mode))
    uri = db.resolve().as_uri()
    try:
        try:
            # Read-write, not ro: when no core runs, the last connection to close removes the
            # -wal and -shm files it needed, as the core does (a read-only one leaves them).
            # Nothing is written: query_only, and the backup reads only.
            source = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=30)
        except sqlite3.OperationalError:
            source = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
        try:
            source.execute("PRAGMA query_only = 1")
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)  # pages=-1: all in one step, one snapshot
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as err:
        why = f" ({PRIVATE})" if "unable to open" in str(err) else ""
        raise CliError(f"cannot copy the history {db}: {err}{why}", EXIT_FAILED) from None
    return target.stat().st_size


def _cut_torn_tail(path: Path) -> None:
    """Cut ``path`` after its last newline: a record being written while it was read."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(64 * 1024, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                if pos + cut + 1 != end:
                    f.truncate(pos + cut + 1)
                return
        f.truncate(0)


def _copy_audit(staged: _Staged, home: Path, log: Path, cert: Path) -> tuple[int, str]:
    """The audit log, its rotated files and its checkpoint; (files copied, how it verified)."""
    cp_file = checkpoint_path(log)
    arc_log = _arcname(home, log, "audit log")
    _add_parents(staged, home, arc_log)
    arc_dir = str(PurePosixPath(arc_log).parent)
    try:
        key = load_verifier(cert)
    except AuditError:
        key = None
    problem = ""
    for _ in range(AUDIT_ATTEMPTS):
        staged.entries = [e for e in staged.entries if not _is_audit(e[0], arc_log, cp_file.name)]
        for old in staged.path(arc_dir).glob(f"{log.name}*"):
            old.unlink()
        with contextlib.suppress(FileNotFoundError):
            staged.path(arc_dir).joinpath(cp_file.name).unlink()
        # The checkpoint file first: the log is never behind it (the core appends and fsyncs
        # the checkpoint record before it replaces the file).
        copied = _copy_file(staged, cp_file, f"{arc_dir}/{cp_file.name}")
        count = 0
        try:
            with log_files(log) as files:
                for path, f in files:
                    mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
                    target = staged.add_file(f"{arc_dir}/{path.name}", mode)
                    f.seek(0)
                    with open(target, "wb") as out:
                        shutil.copyfileobj(f, out, 1024 * 1024)
                    _cut_torn_tail(target)
                    count += 1
        except AuditError as err:
            if "Permission denied" in str(err):
                raise CliError(f"{err} ({PRIVATE})") from None
            raise CliError(str(err), EXIT_FAILED) from None
        if not count and not copied:
            return 0, "no audit log yet"
        if key is None:
            return count, f"not verified ({cert} cannot be read)"
        try:
            report = verify_log(
                staged.path(arc_log),
                key,
                checkpoint_file=staged.path(f"{arc_dir}/{cp_file.name}"),
                require_checkpoint=False,
            )
        except AuditError as err:
            problem = str(err).replace(str(staged.root), "<backup>")
            continue
        return count, f"verified, {report.records} records"
    staged.notes.append(f"the audit log copied does not verify: {problem}")
    return count, "copied as it is, does NOT verify"


def _is_audit(arcname: str, arc_log: str, cp_name: str) -> bool:
    name = PurePosixPath(arcname)
    return str(name.parent) == str(PurePosixPath(arc_log).parent) and (
        name.name == cp_name or name.name.startswith(PurePosixPath(arc_log).name)
    )


class _Hashing:
    """A reader that hashes what passes through it (tarfile reads a member's bytes with it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        return data


def _tarinfo(name: str, mode: int, *, size: int = 0, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode, info.size = mode, size
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_archive(out: Path, staged: _Staged, manifest: dict[str, Any]) -> None:
    """The archive, written to a private temp file beside ``out``, fsynced, then renamed."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
    try:
        os.fchmod(fd, ARCHIVE_MODE)
        sums: list[str] = []
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(
                fileobj=raw, mode="w:gz", compresslevel=COMPRESSION, format=tarfile.PAX_FORMAT
            ) as tar:
                body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
                tar.addfile(_tarinfo(MANIFEST, 0o600, size=len(body)), io.BytesIO(body))
                order = sorted(staged.entries, key=lambda e: (e[0] != SITE_FILE, e[0]))
                for arcname, mode, is_dir in order:
                    path = staged.path(arcname)
                    if is_dir:
                        tar.addfile(_tarinfo(arcname, mode, is_dir=True))
                        continue
                    with open(path, "rb") as f:
                        reader = _Hashing(f)
                        size = os.fstat(f.fileno()).st_size
                        tar.addfile(_tarinfo(arcname, mode, size=size), reader)
                    sums.append(f"{reader.sha.hexdigest()}  {arcname}\n")
                body = "".join(sums).encode()
                tar.addfile(_tarinfo(CHECKSUMS, 0o600, size=len(body)), io.BytesIO(body))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(out.parent)


def _backup_source(args: argparse.Namespace) -> tuple[Path, Path | None, bytes | None]:
    """(home, site file, its content)."""
    if args.config is not None:
        text = _read_small(args.config, "site file")
        home = (
            site_home(args)
            if getattr(args, "home", None)
            else _home_named_by(args.config, text.decode(errors="replace"))
        )
        require_site(argparse.Namespace(home=str(home)))
        return home, args.config.resolve(), text
    home = require_site(args)
    candidate = home / SITE_FILE
    if candidate.is_file():
        return home, candidate, _read_small(candidate, "site file")
    return home, None, None


def backup(args: argparse.Namespace) -> int:
    home, site_file, site_text = _backup_source(args)
    config = _core_config(home)
    try:
        site = SiteCA.load(config.pki_dir, ledger=False).site
    except PkiError as err:
        raise CliError(str(err)) from None
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    default = f"smx-backup-{site}-{_stamp(now)}.tar.gz"
    out = (args.file if args.file is not None else Path(default)).absolute()
    if out.is_dir():
        out = out / default
    if not out.parent.is_dir():
        raise CliError(f"cannot write {out}: {out.parent} is not a directory")
    if out.exists() and not args.force:
        raise CliError(f"{out} exists: give another file name, or --force to replace it")
    if out.resolve().is_relative_to(home):
        raise CliError(
            f"{out} is inside the site home {home}: write the backup elsewhere (a backup in "
            "the home is lost with it)"
        )
    for what, path in (("pki_dir", config.pki_dir), ("policy", config.policy)):
        _arcname(home, path, what)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".smx-backup-", dir=out.parent))
    except OSError as err:
        raise CliError(f"cannot write in {out.parent}: {err.strerror or err}") from None
    try:
        staged = _Staged(tmp)
        staged.add_dir(HOME, _dir_mode(home))
        if site_text is not None and site_file is not None:
            mode = stat.S_IMODE(site_file.stat().st_mode)
            staged.add_file(SITE_FILE, mode).write_bytes(site_text)
        _stage_tree(staged, home, config.pki_dir)
        for path in (config.policy, local_policy_path(config.policy), home / "core.toml"):
            _copy_file(staged, path, _arcname(home, path, "file"))  # a missing one: skipped
        history = _copy_history(staged, home, config.history.path)
        from trusted.core.state import CRL_NUMBER_FILE  # the core's modules: only when used

        crl_number = config.history.path.with_name(CRL_NUMBER_FILE)
        if crl_number.exists():
            arc = _arcname(home, crl_number, "file")
            _add_parents(staged, home, arc)
            _copy_file(staged, crl_number, arc)
        audit_files, audit_state = _copy_audit(
            staged, home, config.audit_path, config.pki_dir / "server" / f"{SERVER_NAME}.crt"
        )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "site": site,
            "created": now.isoformat().replace("+00:00", "Z"),
            "smx": _version(),
            "home": str(home),
            "site_file": str(site_file) if site_file else None,
            "history": _arcname(home, config.history.path, "history") if history else None,
            "audit": _arcname(home, config.audit_path, "audit log") if audit_files else None,
        }
        _write_archive(out, staged, manifest)
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        raise CliError(f"cannot write the backup{where}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for note in staged.notes:
        _warn("smx backup", note)
    total = sum(1 for _, _, is_dir in staged.entries if not is_dir)
    hist = f"history {_size(history)} (consistent copy)" if history is not None else "no history"
    print(
        f"backup of site {site} written to {out} (mode 0600, {_size(out.stat().st_size)}): "
        f"{total} files; {hist}; audit: {audit_files} file(s), {audit_state}"
    )
    return 0


def _version() -> str:
    from trusted.cli.main import version

    return version()


def _warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- restore


def _locked(path: Path) -> bool:
    """Whether another process holds a flock on ``path`` (the supervisor's lock, the core's
    audit log). Unknown (unreadable) counts as not: writing there would fail anyway."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _in_use(home: Path) -> str | None:
    """What runs on ``home`` now, said so that the user knows what to stop; None if nothing."""
    from trusted.cli.core_cmd import serving_pid

    lock = RunPaths(home).lock
    if _locked(lock):
        try:
            who = lock.read_text().strip() or "?"
        except OSError:
            who = "?"
        return f"a supervisor (pid {who}) runs the site in {home}"
    try:
        config = load_core_config(
            home / "core.toml" if (home / "core.toml").is_file() else None, home=home
        )
        sockets, audit = {config.socket, RunPaths(home).socket}, config.audit_path
    except ConfigError:
        sockets, audit = {RunPaths(home).socket}, home / "data" / "audit.jsonl"
    for sock in sorted(sockets):
        pid = serving_pid(sock)
        if pid is not None:
            return f"a core ({f'pid {pid}, ' if pid else ''}socket {sock}) serves the site"
    if _locked(audit):
        return f"a core holds the audit log {audit}"
    return None


@dataclass
class _Member:
    name: str
    rel: PurePosixPath  # below home/, or the name itself for the other members


def _check_name(member: tarfile.TarInfo, seen: set[str]) -> _Member:
    """A member this restore may write: ``home``, ``home/...`` (relative, without ``..``),
    regular files and directories only; anything else means the archive is not ours."""
    name = member.name
    path = PurePosixPath(name)
    bad = (
        path.is_absolute()
        or any(p in ("", ".", "..") for p in name.split("/"))
        or name in seen
        or not (member.isreg() or member.isdir())
    )
    if not bad and path.parts[0] == HOME:
        seen.add(name)
        return _Member(name, PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else path)
    if not bad and name == SITE_FILE and member.isreg():
        seen.add(name)
        return _Member(name, path)
    what = "an unexpected path" if member.isreg() or member.isdir() else "a link or a device"
    raise CliError(
        f"the archive holds {name!r} ({what}): it is not one `smx backup` wrote; nothing was "
        "restored"
    )


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > SMALL_FILE_MAX:
        raise CliError(f"the archive's {member.name} is too large: not one `smx backup` wrote")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def _safe_mode(mode: int) -> int:
    """A mode from an archive, without set-id or sticky bits and without write for the group or
    others: root restores what anybody may have written."""
    return stat.S_IMODE(mode) & 0o755


def _restore_target(args: argparse.Namespace, site_text: bytes | None) -> tuple[Path, Path]:
    """(home, where the site file goes)."""
    if getattr(args, "home", None) or args.config is None:
        home = site_home(args)
        site_file = args.config.absolute() if args.config is not None else home / SITE_FILE
        return home, site_file
    config = args.config.absolute()
    # Where root writes is never the archive's to say (nothing authenticates an archive): the
    # home is the one the site file already in place names.
    try:
        text = config.read_text()
    except OSError:
        raise CliError(
            f"{config} is not there to name the home: give the home to restore into with --home"
        ) from None
    return _home_named_by(config, text), config


def _site_file_warning(site_file: Path, text: bytes, home: Path) -> str | None:
    try:
        named = _home_named_by(site_file, text.decode(errors="replace"))
    except CliError as err:
        return str(err)
    if named == home.resolve():
        return None
    has_key = "home" in tomllib.loads(text.decode(errors="replace"))
    how = "names the home" if has_key else "names no home, so its home is its directory,"
    return (
        f"{site_file} {how} {named}, not {home}: edit `home` in it before `smx run --config "
        f"{site_file}`"
    )


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    """Write the member to ``target`` (new, private until its mode is set); its SHA-256."""
    source = tar.extractfile(member)
    assert source is not None
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    sha = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(1024 * 1024):
            sha.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        os.fchmod(out.fileno(), _safe_mode(member.mode))
    return sha.hexdigest()


def restore(args: argparse.Namespace) -> int:
    archive = args.file
    if archive.is_dir():
        raise CliError(f"{archive} is a directory: give the archive `smx backup` wrote")
    try:
        tar = tarfile.open(archive, "r|gz")
    except FileNotFoundError:
        raise CliError(f"{archive}: no such file") from None
    except PermissionError:
        raise CliError(f"cannot read {archive}: permission denied") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise CliError(f"{archive} is not a tar.gz archive `smx backup` wrote ({err})") from None
    try:
        with tar:
            return _restore(args, archive, tar)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CliError(f"{archive}: damaged archive ({err}); nothing was restored") from None


@dataclass
class _Restored:
    home: Path
    sums: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 of what was written
    dirs: dict[PurePosixPath, int] = field(default_factory=dict)  # staged directory -> mode
    home_mode: int = 0o750


def _restore(args: argparse.Namespace, archive: Path, tar: tarfile.TarFile) -> int:
    members = iter(tar)
    first = next(members, None)
    if first is None or first.name != MANIFEST or not first.isreg():
        raise CliError(f"{archive} is not a backup `smx backup` wrote (no {MANIFEST} first)")
    try:
        manifest = json.loads(_read_member(tar, first))
    except ValueError:
        raise CliError(f"{archive}: its {MANIFEST} is not JSON: damaged archive") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CliError(f"{archive} is not a backup `smx backup` wrote ({MANIFEST})")
    if manifest.get("version") != VERSION:
        raise CliError(
            f"{archive} is a backup of format version {manifest.get('version')!r}; this smx "
            f"reads version {VERSION}: restore it with the smx that wrote it "
            f"({manifest.get('smx', '?')})"
        )
    seen: set[str] = set()
    member = next(members, None)
    site_text, site_mode = None, 0o600
    if member is not None and member.name == SITE_FILE:
        _check_name(member, seen)
        site_text = _read_member(tar, member)
        site_mode = stat.S_IMODE(member.mode)
        member = next(members, None)
    home, site_file = _restore_target(args, site_text)
    _check_target(home, site_file if site_text is not None else None, args.force)
    out = _Restored(home)
    if site_text is not None:
        out.sums[SITE_FILE] = hashlib.sha256(site_text).hexdigest()
    created = not home.exists()
    try:
        home.mkdir(mode=0o750, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".smx-restore-", dir=home))
    except OSError as err:
        raise CliError(f"cannot create {home}: {err.strerror or err}") from None
    try:
        listed = _extract(tar, members, member, staging, out, seen, archive)
        if listed != out.sums:
            wrong = sorted(
                (set(listed) ^ set(out.sums))
                | {n for n in out.sums if listed.get(n) not in (None, out.sums[n])}
            )
            raise CliError(
                f"{archive}: checksums do not match ({', '.join(wrong[:3])}): damaged archive; "
                "nothing was restored"
            )
        for rel in sorted(out.dirs, key=lambda p: len(p.parts), reverse=True):
            os.chmod(staging / rel, out.dirs[rel])
        replaced = _move_into_place(home, staging)
        os.chmod(home, out.home_mode)
    except OSError as err:
        _undo(staging, home if created else None)
        where = f" ({err.filename})" if err.filename else ""
        raise CliError(f"cannot restore into {home}: {err.strerror or err}{where}") from None
    except BaseException:
        _undo(staging, home if created else None)
        raise
    if site_text is not None:
        _write_site_file(site_file, site_text, site_mode, args.force)
        warning = _site_file_warning(site_file, site_text, home)
        if warning:
            _warn("smx restore", warning)
    _fsync_dir(home)
    files = sum(1 for n in out.sums if n != SITE_FILE)
    parts = [
        f"site {manifest.get('site', '?')} (backed up {manifest.get('created', '?')}) restored "
        f"into {home}: {files} files with their modes"
    ]
    if site_text is not None:
        parts.append(f"site file {site_file}")
    if replaced is not None:
        parts.append(f"the files it replaced are in {replaced} (delete it once the site runs)")
    if os.geteuid() == 0:
        parts.append("the files are root's until `smx run` gives them to the site's users")
    print("; ".join(parts))
    return 0


def _undo(staging: Path, created_home: Path | None) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if created_home is not None:
        shutil.rmtree(created_home, ignore_errors=True)


def _extract(
    tar: tarfile.TarFile,
    members: Iterator[tarfile.TarInfo],
    member: tarfile.TarInfo | None,
    staging: Path,
    out: _Restored,
    seen: set[str],
    archive: Path,
) -> dict[str, str]:
    """Write the home's members into ``staging``; the checksums the archive lists."""
    # An archive is not authenticated: a small one may claim gigabytes (a decompression bomb).
    budget, total = int(shutil.disk_usage(staging).free * 0.8), 0
    while member is not None:
        if member.name == CHECKSUMS and member.isreg():
            listed = _parse_sums(_read_member(tar, member), archive)
            if next(members, None) is not None:
                raise CliError(f"{archive}: members after {CHECKSUMS}: damaged archive")
            return listed
        m = _check_name(member, seen)
        if m.name == SITE_FILE:
            raise CliError(f"{archive}: {SITE_FILE} out of place: damaged archive")
        if m.name == HOME:
            out.home_mode = _safe_mode(member.mode)
        elif member.isdir():
            (staging / m.rel).mkdir(mode=0o700, parents=True, exist_ok=True)
            out.dirs[m.rel] = _safe_mode(member.mode)
        else:
            total += member.size
            if total > budget:
                raise CliError(
                    f"{archive}: its files would take more than 80% of the free space of "
                    f"{staging.parent}: nothing was restored"
                )
            out.sums[m.name] = _extract_file(tar, member, staging / m.rel)
        member = next(members, None)
    raise CliError(f"{archive}: cut short (no {CHECKSUMS} at its end): damaged archive")


def _parse_sums(raw: bytes, archive: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CliError(f"{archive}: its {CHECKSUMS} is malformed: damaged archive")
        out[name] = digest
    return out


def _check_target(home: Path, site_file: Path | None, force: bool) -> None:
    if home.exists() and not home.is_dir():
        raise CliError(f"{home} is not a directory: give the site home with --home")
    if home.is_dir():
        running = _in_use(home)
        if running:
            raise CliError(
                f"{running}: stop it before restoring into {home} (systemctl stop smx, or "
                "Ctrl-C in its terminal)",
                EXIT_FAILED,
            )
        try:
            entries = sorted(p.name for p in home.iterdir())
        except OSError as err:
            raise CliError(f"cannot read {home}: {err.strerror or err}") from None
        if entries and not force:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise CliError(
                f"{home} is not empty ({shown}): restore into an empty or new directory, or give "
                "--force to move the files the backup replaces to <home>/replaced-TIME/"
            )
    if site_file is not None and site_file.exists() and not force:
        raise CliError(
            f"{site_file} exists: give another place with --config, or --force to replace it "
            f"(the old one is kept as {site_file.name}.replaced-TIME)"
        )


def _move_into_place(home: Path, staging: Path) -> Path | None:
    """Rename each staged top-level entry into the home; what was there goes to
    ``replaced-TIME/`` (the same file system: nothing is copied, nothing deleted)."""
    replaced = None
    for entry in sorted(staging.iterdir()):
        target = home / entry.name
        if target.exists() or target.is_symlink():
            if replaced is None:
                now = dt.datetime.now(dt.UTC)
                replaced = home / f"replaced-{_stamp(now)}"
                replaced.mkdir(mode=0o700)
            os.rename(target, replaced / entry.name)
        os.rename(entry, target)
    staging.rmdir()
    return replaced


def _write_site_file(path: Path, text: bytes, mode: int, force: bool) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if force and path.exists():
            stamp = _stamp(dt.datetime.now(dt.UTC))
            os.rename(path, path.with_name(f"{path.name}.replaced-{stamp}"))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), _safe_mode(mode))
        os.replace(tmp, path)
    except OSError as err:
        raise CliError(f"cannot write the site file {path}: {err.strerror or err}") from None
