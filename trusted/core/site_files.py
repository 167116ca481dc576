"""Private files of the site directory: created with modes that exclude other users whatever the
process umask, and checked when the core starts.

Modes (the most a path may allow; see docs/SITE.md, "The site directory"):

- the site home and the run directory: 0750 (the socket's group must reach ``core.sock``);
- the directories holding the history database and the audit log (``data/``): 0700;
- the history database, its ``-wal`` and ``-shm`` files, the audit log and its rotated files,
  ``policy.toml`` and the operator's ``policy.local.toml``: 0600;
- ``core.toml``: 0640.

`check_site` fixes a path the core may change (it owns it, or runs as root) by clearing the
extra bits, with one WARNING line naming the path and its old and new mode, and refuses with
`SiteFileError` (one line) a path it cannot fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from smx.files import write_atomic
from trusted.policy import local_policy_path

__all__ = [
    "CONFIG_FILE_MODE",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "SHARED_DIR_MODE",
    "SiteFileError",
    "check_mode",
    "check_policy_files",
    "check_site",
    "create_private_file",
    "private_dir",
    "site_paths",
    "tighten_existing",
    "write_private",
]

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700  # data/: the core's alone
SHARED_DIR_MODE = 0o750  # the home and run/: a group reaches the socket and the run files
PRIVATE_FILE_MODE = 0o600  # history, audit, policy
CONFIG_FILE_MODE = 0o640  # core.toml


class SiteFileError(RuntimeError):
    """A site path other users can read or write and that the core cannot fix."""


def private_dir(path: Path, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create ``path`` and its missing parents with ``mode`` (chmod'ed, so the umask does not
    matter). An existing directory is left as it is (the start-up check judges it)."""
    missing: list[Path] = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)


def create_private_file(path: Path, mode: int = PRIVATE_FILE_MODE) -> bool:
    """Create an empty ``path`` with exactly ``mode`` if it does not exist; True if created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def write_private(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` atomically (temp file + rename) by ``data`` with exactly ``mode``."""
    write_atomic(path, data, mode)


def tighten_existing(path: Path, mode: int) -> None:
    """Clear the bits beyond ``mode`` of ``path`` if it exists (silently: files the core has just
    created itself, such as SQLite's -wal/-shm)."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def check_mode(path: Path, mode: int) -> None:
    """Fix (WARNING) or refuse (SiteFileError) ``path`` if it allows more than ``mode``; a
    missing path is fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise SiteFileError(f"{path}: cannot check its mode: {err.strerror or err}") from err
    old = stat.S_IMODE(st.st_mode)
    if not old & ~mode & 0o077:
        return
    new = old & (mode | 0o7700)
    what = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if st.st_uid != os.geteuid() and os.geteuid() != 0:
        me = _user_name(os.geteuid())
        raise SiteFileError(
            f"{path}: {what} mode {old:04o} lets other users in, and it belongs to uid "
            f"{st.st_uid}, not to this core ({me}): give it to the core, "
            f"`chown {me} {path}; chmod {new:04o} {path}` as root (`smx run` does it at start)"
        )
    try:
        os.chmod(path, new)
    except OSError as err:
        raise SiteFileError(
            f"{path}: {what} mode {old:04o} lets other users in and cannot be changed: "
            f"{err.strerror or err}"
        ) from err
    log.warning("%s: %s mode %04o let other users in; changed to %04o", path, what, old, new)


def site_paths(
    home: Path,
    *,
    history: Path,
    audit: Path,
    policy: Path,
    core_toml: Path | None = None,
) -> Iterator[tuple[Path, int]]:
    """(path, most allowed mode) of every site path the core checks at start, directories first.
    Directories holding the history or the audit are checked only inside the home: one outside
    it is the operator's choice (the files themselves are checked wherever they are)."""
    home = Path(home)
    yield home, SHARED_DIR_MODE
    yield home / "run", SHARED_DIR_MODE
    seen = {home}
    for f in (history, audit):
        d = Path(f).parent
        if d not in seen and d.is_relative_to(home):
            seen.add(d)
            yield d, PRIVATE_DIR_MODE
    for suffix in ("", "-wal", "-shm"):
        yield Path(f"{history}{suffix}"), PRIVATE_FILE_MODE
    yield Path(audit), PRIVATE_FILE_MODE
    for rotated in sorted(Path(audit).parent.glob(f"{Path(audit).name}.*")):
        yield rotated, PRIVATE_FILE_MODE  # audit.jsonl.1, .2, ...
    yield Path(policy), PRIVATE_FILE_MODE
    yield local_policy_path(policy), PRIVATE_FILE_MODE
    yield (core_toml or home / "core.toml"), CONFIG_FILE_MODE


def check_site(
    home: Path,
    *,
    history: Path,
    audit: Path,
    policy: Path,
    core_toml: Path | None = None,
) -> None:
    """The start-up check: every path of `site_paths` fixed or refused (see `check_mode`)."""
    for path, mode in site_paths(
        home, history=history, audit=audit, policy=policy, core_toml=core_toml
    ):
        check_mode(path, mode)


def check_policy_files(policy: Path) -> None:
    """Before a reload: the policy files must not be writable by anyone but their owner, nor be
    symbolic links. Unlike at start nothing is fixed: a file others could write may already say
    what they wrote (SiteFileError, and the policy in force stays)."""
    for path in (Path(policy), local_policy_path(policy)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise SiteFileError(f"{path}: a symbolic link; the policy must be a file of its own")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022:
            raise SiteFileError(
                f"{path}: mode {mode:04o} lets other users write it; check what it says, "
                f"`chmod 600 {path}`, and reload again"
            )


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
