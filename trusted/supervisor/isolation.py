"""Least privilege between the processes of a site, enforced by the OS (``smx run`` as root).

Users and groups (created by provisioning, :func:`ensure_accounts`, with ``useradd --system``
when missing): one user per extension, agent and simulator, ``smx-<h>-<name>``, one for the core,
``smx-<h>-core``, each with its own primary group, and the site group ``smx-<h>`` that every
child has as its one supplementary group: it reaches the home, ``run/`` and the core's socket.
``<h>`` is 4 hex digits of the site id's SHA-256; names stay within 32 characters.

Ownership (:func:`apply_ownership`, on every start):

- home, ``run/``, ``run/logs/``, ``pki/`` and its directories: root, the site group, 0750. The
  home is root's because every child imports local modules from it (it is on their
  ``PYTHONPATH``) and ``pki/`` lives in it: its owner could plant code in every child or swap
  the CA. The core's socket lives in ``sock/`` (the core's user, the site group, 02750: the
  socket is born in the site group, mode 0660); ``core.sock`` in the home is root's symlink to
  it, so every client keeps the one address;
- ``data/`` and everything in it, ``policy.toml``, ``policy.local.toml``, ``core.toml``, the
  server key and certificate: the core's user (modes as docs/SITE.md);
- ``pki/ca.key``, ``pki/index.json``, ``admin.key``, ``supervisor.key``: root only (0600);
- each client's key and certificate, ``run/<name>.config.json`` and its private directory
  ``run/<name>/`` (0700, its working directory, holding ``health.json``): its own user;
- with a volatile directory (site.toml ``[supervisor] volatile_dir``, a tmpfs), see
  :func:`prepare_volatile`: the site's directory there is root's (the site group, 0750), holding
  root's ``supervisor.json`` and one directory per process (its own user, 0700) for its
  ``health.json``; ``run/supervisor.json`` and ``run/<name>.health.json`` are root's links to
  them. Nothing in it survives a reboot, so it is made again on every start.

Each child (:func:`privilege_dropper`, run by a fresh interpreter that then execs the child,
:func:`exec_argv`): a private mount namespace
when the interpreter lives below a directory other users cannot enter (e.g. ``/root``: a tmpfs
is mounted there holding only the needed entries), then ``setgroups``/``setgid``/``setuid`` to
its own user (a uid change from root clears every capability; the bounding set is emptied
too), ``PR_SET_NO_NEW_PRIVS``, umask 077. The environment is :func:`minimal_environ`.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import hashlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smx.identity import SERVER_NAME
from smx.process_env import RunPaths

__all__ = [
    "SOCKET_DIR",
    "REAPER",
    "Account",
    "drop_spec",
    "dropper_of",
    "exec_argv",
    "IsolationError",
    "apply_ownership",
    "core_user",
    "ensure_accounts",
    "isolation_wanted",
    "kill_all_argv",
    "minimal_environ",
    "prepare_volatile",
    "privilege_dropper",
    "private_dir_of",
    "remove_accounts",
    "site_group",
    "user_name",
]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_MAX_NAME = 32
SOCKET_DIR = "sock"  # the core's socket under isolation: the one place in the home it may write
# Environment variables a child keeps besides SMX_* (docs/SITE.md, "Isolation").
_KEEP_ENV = ("PATH", "LANG", "PYTHONPATH", "PYTHONUNBUFFERED")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class IsolationError(Exception):
    """An account cannot be created or a path cannot be given to its owner."""


def isolation_wanted() -> bool:
    """Isolation is on when the supervisor runs as root."""
    return os.geteuid() == 0


def _h(text: str, n: int = 4) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def site_group(site: str, home: Path) -> str:
    """The site's group ``smx-<h>``, ``<h>`` from the site id and its home: two sites of one id
    (two demos) never share users, so one's cleanup cannot kill the other's processes."""
    return f"smx-{_h(f'{site}:{Path(home).resolve()}', 6)}"


def user_name(site: str, home: Path, name: str) -> str:
    """The OS user of process ``name`` of ``site``: ``smx-<h>-<name>``, at most 32 characters
    (a long name is cut and given 4 hex digits of its hash)."""
    prefix = f"{site_group(site, home)}-"
    if len(prefix) + len(name) <= _MAX_NAME:
        return prefix + name
    keep = _MAX_NAME - len(prefix) - 5
    return f"{prefix}{name[:keep]}-{_h(name)}"


def core_user(site: str, home: Path) -> str:
    return user_name(site, home, "core")  # "core" is a reserved process name: no clash


def private_dir_of(home: Path, name: str) -> Path:
    """The private working directory of process ``name``: ``run/<name>/``."""
    return RunPaths(Path(home)).private_dir(name)


@dataclass(frozen=True)
class Account:
    """Who a child runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def _run(argv: list[str]) -> None:
    # useradd/groupadd lock /etc/passwd: a concurrent provisioning may hold the lock briefly.
    for attempt in range(20):
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        if r.returncode == 0:
            return
        if attempt == 19 or "lock" not in (r.stderr + r.stdout).lower():
            raise IsolationError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
        time.sleep(0.1)


def _ensure_group(name: str) -> int:
    with contextlib.suppress(KeyError):
        return grp.getgrnam(name).gr_gid
    failure = None
    try:
        _run(["groupadd", "--system", name])
    except IsolationError as err:  # a concurrent provisioning may have created it
        failure = err
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise IsolationError(f"cannot create the group {name}: {failure}") from None


def _ensure_user(name: str, comment: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    failure = None
    try:
        _run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--comment",
                comment,
                name,
            ]
        )
    except IsolationError as err:  # a concurrent provisioning may have created it
        failure = err
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise IsolationError(f"cannot create the user {name}: {failure}") from None


# The user that kills what is left of a process's user (`kill_all_argv`); no process of the
# site runs as it. A process name cannot start with "_": no clash.
REAPER = "_reaper"


def ensure_accounts(site: str, home: Path, names: Iterable[str]) -> dict[str, Account]:
    """Create (if missing) the site group, the core's user, the reaper and one user per process
    name; returns name -> Account, the core under ``"core"``, the reaper under `REAPER`."""
    gid = _ensure_group(site_group(site, home))
    out: dict[str, Account] = {}
    for name in ["core", REAPER, *names]:
        # The home in the comment: a cleanup can tell a live site's accounts from a gone one's.
        where = str(Path(home).resolve()).replace(":", "_").replace(",", "_")
        pw = _ensure_user(user_name(site, home, name), f"SMX site {site} process {name} in {where}")
        out[name] = Account(pw.pw_uid, pw.pw_gid, (gid,))
    return out


def lookup_accounts(site: str, home: Path, names: Iterable[str]) -> dict[str, Account]:
    """The accounts :func:`ensure_accounts` created (KeyError if one is missing)."""
    gid = grp.getgrnam(site_group(site, home)).gr_gid
    out: dict[str, Account] = {}
    for name in ["core", REAPER, *names]:
        pw = pwd.getpwnam(user_name(site, home, name))
        out[name] = Account(pw.pw_uid, pw.pw_gid, (gid,))
    return out


def remove_accounts(site: str, home: Path, names: Iterable[str]) -> None:
    """Delete the users and the group of a site that will not run again (a demo's)."""
    for name in ["core", REAPER, *names]:
        subprocess.run(["userdel", user_name(site, home, name)], capture_output=True, check=False)
    subprocess.run(["groupdel", site_group(site, home)], capture_output=True, check=False)


def _own(path: Path, uid: int, gid: int, mode: int | None = None) -> None:
    # A path that cannot exist (a file where a directory should be) is the core's to report.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.lchown(path, uid, gid)
        if mode is not None and not Path(path).is_symlink():
            os.chmod(path, mode)


def apply_ownership(
    home: Path,
    *,
    site: str,
    accounts: Mapping[str, Account],
    clients: Iterable[str],
    others: Iterable[str],
    pki_dir: Path,
    data_paths: Iterable[Path],
    core_files: Iterable[Path],
    socket_link: Path | None = None,
    volatile: Path | None = None,
) -> None:
    """Give every site path to its owner (see the module docstring). ``clients`` have a key;
    ``others`` (simulators) only a config file and a private directory; ``socket_link``, in the
    home, becomes root's symlink to the core's socket in ``sock/``; ``volatile``: the site's
    directory on a tmpfs (`RunPaths.volatile`), made by :func:`prepare_volatile`."""
    home = Path(home)
    for d in data_paths:
        if Path(d).resolve() == home.resolve():
            raise IsolationError(
                f"the history or the audit log is directly in the site home {home}: the home "
                "belongs to root when processes are isolated; put them in a directory of the "
                "home such as data/"
            )
    core = accounts["core"]
    site_gid = core.groups[0]
    paths = RunPaths(home, volatile)
    _own(home, 0, site_gid, 0o750)
    sock = home / SOCKET_DIR
    if sock.is_symlink() or (sock.exists() and not sock.is_dir()):
        sock.unlink()
    sock.mkdir(exist_ok=True)
    _own(sock, core.uid, site_gid, 0o2750)
    if socket_link is not None:
        _link_socket(Path(socket_link), sock / Path(socket_link).name)
    _own(paths.run, 0, site_gid, 0o750)
    _own(paths.logs, 0, site_gid, 0o750)
    for d in (pki_dir, pki_dir / "server", pki_dir / "clients"):
        if d.is_dir():
            _own(d, 0, site_gid, 0o750)
    for public in ("ca.crt", "crl.pem"):
        _own(pki_dir / public, 0, site_gid)
    _own(pki_dir / "ca.key", 0, 0, 0o600)
    _own(pki_dir / "index.json", 0, 0, 0o600)
    for server in (pki_dir / "server").glob(f"{SERVER_NAME}.*"):
        _own(server, core.uid, core.gid)
    data_dirs = [Path(d) for d in data_paths if Path(d).is_relative_to(home)]
    for f in core_files:
        # Files in the core's own directories are handed over by the walk below: a path
        # through a directory the core owns could be swapped for a link on the way.
        if not any(Path(f).is_relative_to(d) for d in data_dirs):
            _own(f, core.uid, core.gid)
    for d in data_dirs:
        # A directory inside another is walked with it (its path would cross the core's own).
        if not any(d != o and d.is_relative_to(o) for o in data_dirs):
            _give_tree(d, core)
    _make_private(paths.private_dir("core"), core)
    for name in [*clients, *others]:
        acc = accounts[name]
        _make_private(paths.private_dir(name), acc)
        _own(paths.config_file(name), acc.uid, acc.gid, 0o600)
    if volatile is not None:
        clients = list(clients)
        prepare_volatile(paths, {n: accounts[n] for n in ["core", *clients]}, site_gid)
    for name in ["core", *clients, *others]:  # the core keeps a heartbeat too
        link = paths.health_file(name)
        if volatile is None and (link.is_symlink() or not link.exists()):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(paths.private_dir(name).relative_to(paths.run) / "health.json")
    for name in clients:
        acc = accounts[name]
        for suffix in (".key", ".crt"):
            _own(pki_dir / "clients" / f"{name}{suffix}", acc.uid, acc.gid)


def prepare_volatile(paths: RunPaths, owners: Mapping[str, Account], site_gid: int) -> None:
    """Make the site's directory in memory, ``paths.volatile``, and a directory of their own
    in it for ``owners`` (process name -> its user), then point ``run/supervisor.json`` and
    ``run/<name>.health.json`` at the files there. Run on every start (a tmpfs is empty after
    a reboot), as the supervisor's user (root: isolated; then each directory is its process's).

    Nothing here follows a link someone else could have planted: the configured directory must
    not be writable by other users (unless sticky, like /dev/shm), the site's directory in it
    must be ours, and each entry below is made and opened relative to its parent's descriptor,
    without following links, and given its owner and mode through its own descriptor."""
    site_dir = paths.volatile
    if site_dir is None:
        return
    me = os.geteuid()
    root = site_dir.parent
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = os.stat(root)
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise IsolationError(
            f"volatile_dir {root}: other users may write in it (mode {info.st_mode & 0o7777:o}, "
            "not sticky): give it to the supervisor's user with mode 0755"
        )
    if info.st_uid not in (0, me):
        raise IsolationError(f"volatile_dir {root}: owned by uid {info.st_uid}, not by root")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        site_fd = _own_dir(root_fd, site_dir.name, me, site_gid, 0o750, replace=False)
    finally:
        os.close(root_fd)
    try:
        for name, acc in owners.items():
            os.close(_own_dir(site_fd, name, acc.uid, acc.gid, 0o700, replace=True))
    finally:
        os.close(site_fd)
    _link_to(paths.status, paths.status_file)
    for name in owners:
        _link_to(paths.health_file(name), paths.volatile_dir(name) / "health.json")


def _own_dir(parent: int, name: str, uid: int, gid: int, mode: int, *, replace: bool) -> int:
    """Directory ``name`` of the directory open at ``parent``, made if missing and given
    ``uid``, ``gid`` and ``mode``; its open descriptor. ``replace``: anything else in its place
    (a link, a file its owner left) is removed first; else it is refused."""
    for _ in range(3):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        try:
            fd = os.open(name, _WALK_DIR, dir_fd=parent)
        except FileNotFoundError:
            continue
        except OSError as err:  # a link (ELOOP), a file (ENOTDIR)
            if not replace:
                raise IsolationError(
                    f"{name} in the volatile directory is not a directory of ours "
                    f"({err.strerror}): remove it"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent)
            continue
        st = os.fstat(fd)
        if not replace and st.st_uid != os.geteuid():
            os.close(fd)
            raise IsolationError(
                f"{name} in the volatile directory belongs to uid {st.st_uid}, not to the "
                "supervisor: remove it"
            )
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        return fd
    raise IsolationError(f"cannot make {name} in the volatile directory: it keeps changing")


def _link_to(link: Path, target: Path) -> None:
    """``link`` (in ``run/``, the supervisor's) becomes a link to ``target``, whatever it was."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _link_socket(link: Path, socket: Path) -> None:
    """``link`` -> ``socket`` (relative), replacing a socket a core left at ``link``."""
    target = os.path.relpath(socket, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink() or link.is_socket():
        link.unlink()
    elif link.exists():
        raise IsolationError(f"{link} is in the way of the core's socket link: remove it")
    link.symlink_to(target)
    os.lchown(link, 0, 0)


_WALK_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WALK_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WALK_DEPTH = 32


def _give_tree(top: Path, acc: Account) -> None:
    """Give ``top`` and everything in it to ``acc``. The owner-to-be may be changing the tree
    meanwhile, so root acts only through descriptors it opened itself: each entry is opened
    relative to its parent without following a link and without blocking (a FIFO swapped in
    cannot hang it), checked on its descriptor (same file system; a regular file with one
    link; a directory), and chowned through that descriptor. Links are left alone."""
    try:
        fd = os.open(top, _WALK_DIR)  # its parent (the home) is root's: no swap possible
    except (FileNotFoundError, NotADirectoryError, OSError):
        return
    try:
        dev = os.fstat(fd).st_dev
        _give_dir(fd, dev, acc, _WALK_DEPTH)
    finally:
        os.close(fd)


def _give_dir(fd: int, dev: int, acc: Account, depth: int) -> None:
    info = os.fstat(fd)
    if info.st_dev != dev:
        return
    if (info.st_uid, info.st_gid) != (acc.uid, acc.gid):
        os.fchown(fd, acc.uid, acc.gid)
    if depth <= 0:
        return
    for name in os.listdir(fd):
        try:
            child = os.open(name, _WALK_FILE, dir_fd=fd)
        except OSError:
            continue  # gone, a link (ELOOP), or not openable: nothing root should touch
        try:
            st = os.fstat(child)
            if stat.S_ISDIR(st.st_mode):
                _give_dir(child, dev, acc, depth - 1)
            elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_dev == dev:
                if (st.st_uid, st.st_gid) != (acc.uid, acc.gid):
                    os.fchown(child, acc.uid, acc.gid)
        finally:
            os.close(child)


def _make_private(d: Path, acc: Account) -> None:
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        d.unlink()
    d.mkdir(mode=0o700, exist_ok=True)
    os.lchown(d, acc.uid, acc.gid)
    os.chmod(d, 0o700)


def minimal_environ(env: Mapping[str, str]) -> dict[str, str]:
    """PATH, LANG, PYTHONPATH, PYTHONUNBUFFERED and the SMX_* variables of ``env``, no other."""
    out = {k: v for k, v in env.items() if k in _KEEP_ENV or k.startswith("SMX_")}
    out.setdefault("PATH", _DEFAULT_PATH)
    return out


def _blocked(paths: Iterable[Path]) -> dict[str, set[str]]:
    """{directory other users cannot enter: {its entries on the way to ``paths``}}."""
    out: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        cur = Path(parts[0])
        for part in parts[1:]:
            try:
                st = os.stat(cur)
            except OSError:
                break
            if stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o001 and st.st_uid == 0:
                out.setdefault(str(cur), set()).add(part)
                break
            cur = cur / part
    return out


def privilege_dropper(account: Account, reach: Iterable[Path], nice: int = 0) -> Callable[[], None]:
    """The privilege drop, run in the fresh interpreter of `exec_argv` before it execs: see the
    module docstring. ``reach``: paths the child must reach (interpreter, code); a root-owned
    directory on their way that other users cannot enter is replaced, in the child's own mount
    namespace, by a tmpfs holding only the entries leading to them. ``nice``: the child's CPU
    priority, set while it may still raise it; every thread it starts inherits it."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl, mount, unshare = libc.prctl, libc.mount, libc.unshare
    bridges = sorted(_blocked(reach).items())
    uid, gid, groups = account.uid, account.gid, list(account.groups)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def drop() -> None:
        try:
            _drop()
        except BaseException as err:  # stderr is already the process's log
            os.write(2, f"smx run: cannot drop privileges: {err}\n".encode())
            raise

    def _drop() -> None:
        if bridges:
            check(unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            check(mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount private /")
            for blocked, names in bridges:
                fds = [(n, os.open(os.path.join(blocked, n), _O_PATH)) for n in sorted(names)]
                check(
                    mount(
                        b"tmpfs",
                        blocked.encode(),
                        b"tmpfs",
                        _MS_NOSUID | _MS_NODEV,
                        b"mode=0755,size=64k",
                    ),
                    f"mount tmpfs on {blocked}",
                )
                for n, fd in fds:
                    target = os.path.join(blocked, n)
                    if stat.S_ISDIR(os.fstat(fd).st_mode):
                        os.mkdir(target)
                    else:
                        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
                    src = f"/proc/self/fd/{fd}".encode()
                    check(
                        mount(src, target.encode(), None, _MS_BIND | _MS_REC, None),
                        f"bind {target}",
                    )
                    os.close(fd)
        if nice:
            _set_priority(nice)
        for cap in range(64):
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break  # EINVAL: past the last capability of this kernel
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        os.umask(0o077)

    return drop


def drop_spec(account: Account, reach: Iterable[Path], nice: int = 0) -> dict[str, Any]:
    """The privilege drop of one child as JSON: what the exec wrapper (`exec_argv`) and a fork
    server's child (trusted.supervisor.fork_server) are given, read back by `dropper_of`."""
    return {
        "uid": account.uid,
        "gid": account.gid,
        "groups": list(account.groups),
        "reach": [str(p) for p in reach],
        "nice": nice,
    }


def dropper_of(spec: Mapping[str, Any]) -> Callable[[], None]:
    """`privilege_dropper` for a `drop_spec`."""
    account = Account(int(spec["uid"]), int(spec["gid"]), tuple(int(g) for g in spec["groups"]))
    return privilege_dropper(account, [Path(p) for p in spec["reach"]], int(spec["nice"]))


def _set_priority(nice: int) -> None:
    """This process's CPU priority, and its session's: every child runs in a session of its own
    (`start_new_session`), and where the kernel groups sessions for scheduling (autogroup, the
    default on most distributions) a nice value only ranks threads within their own session:
    against the other processes of the site only the session's autogroup nice counts. Without
    CAP_SYS_NICE (a container) it is one line in the process's log, not a failure."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(nice))
    except FileNotFoundError:
        pass  # a kernel without autogroup: the nice value alone counts
    except PermissionError:
        os.write(2, f"smx run: CPU priority {nice} not applied: not permitted\n".encode())


def exec_argv(
    python: str,
    account: Account,
    reach: Iterable[Path],
    argv: list[str],
    cwd: Path,
    nice: int = 0,
) -> list[str]:
    """`argv` started in `cwd` through a fresh interpreter that drops privileges and then
    execs it. Start the result with working directory ``/``.

    Not a `preexec_fn`: the supervisor has gRPC threads, and Python code run between fork and
    exec in such a process can abort the child (gRPC's fork handlers are skipped while other
    threads are inside it; the core was seen dying with SIGABRT under load). The fresh
    interpreter has no thread and no gRPC. It runs this file as a script in isolated mode
    (``-I``: no working directory, no ``PYTHONPATH``, no user site on ``sys.path``) and enters
    `cwd` only after the drop: `cwd` is the child's own directory, and a module the child
    left there must never be imported by root.
    """
    spec = {**drop_spec(account, reach, nice), "cwd": str(cwd)}
    return [python, "-I", str(Path(__file__).resolve()), json.dumps(spec), "--", *argv]


def kill_all_argv(python: str, target: Account, reaper: Account) -> list[str]:
    """A command that kills every process of ``target``'s user: a helper of a process, however
    it left its group and session, cannot outlive it. Each account belongs to one process of
    the site, so nothing else is hit. It runs with the real and saved uid of ``reaper`` and the
    effective uid of ``target``: it may signal the target's processes, which may not signal it
    (they could stop it otherwise). Run one at a time: two would share their real uid."""
    spec = {"uid": target.uid, "reaper_uid": reaper.uid, "reaper_gid": reaper.gid}
    return [python, "-I", str(Path(__file__).resolve()), json.dumps(spec), "--kill-all"]


KILLED_SOME = 3  # exit code of --kill-all when it found processes to kill


def _processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``, read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                status = f.read(4096)
        except OSError:
            continue
        fields = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        state, uids = fields.get(b"State", b"").split(), fields.get(b"Uid", b"").split()
        if uids and int(uids[0]) == uid and state[:1] != [b"Z"]:
            out.append(int(entry))
    return out


def _kill_all(uid: int, reaper_uid: int, reaper_gid: int) -> int:
    os.setgroups([])
    os.setresgid(reaper_gid, reaper_gid, reaper_gid)
    os.setresuid(reaper_uid, uid, reaper_uid)
    # Seen before the kill (a process hopping to a new pid every few ms may be missed by a
    # scan; it only decides the warning).
    found = bool(_processes_of(uid))
    # kill(-1) reaches every process the effective uid may signal, in one pass the kernel
    # makes atomic with fork, so it is always done; repeated while a scan still sees one.
    for _ in range(1000):
        with contextlib.suppress(OSError):
            os.kill(-1, 9)
        if not _processes_of(uid):
            break
        found = True
    return KILLED_SOME if found else 0


def die_with(parent: int) -> bool:
    """This process is killed when `parent` (the supervisor, or a fork server) ends: a killed
    supervisor leaves nothing running as the site's users. Set after the uid change, which
    clears it; the setting survives exec. False: `parent` is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def main(args: list[str]) -> None:
    """`python -I isolation.py SPEC -- ARGV...` (see `exec_argv`), or
    `python -I isolation.py SPEC --kill-all` (see `kill_all_argv`)."""
    if args[1:] == ["--kill-all"]:
        spec = json.loads(args[0])
        raise SystemExit(
            _kill_all(int(spec["uid"]), int(spec["reaper_uid"]), int(spec["reaper_gid"]))
        )
    spec, argv = json.loads(args[0]), args[2:]
    supervisor = os.getppid()
    dropper_of(spec)()
    if not die_with(supervisor):
        raise SystemExit(f"cannot start {argv[0]}: the supervisor ended meanwhile")
    try:
        os.chdir(spec["cwd"])
        os.execvp(argv[0], argv)
    except OSError as err:
        # One line in the process's log, which `smx status` shows as its last error.
        where = err.filename or argv[0]
        print(
            f"cannot start {argv[0]} as uid {spec['uid']}: {where}: {err.strerror}; every "
            "directory on the way to the interpreter and the code must be open to other users "
            "(e.g. install under /opt, not in a private home)",
            file=sys.stderr,
        )
        raise SystemExit(126) from None


if __name__ == "__main__":
    main(sys.argv[1:])
