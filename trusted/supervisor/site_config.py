"""The site file (``site.toml``) read by ``smx run``: which core, extensions, agents and
simulators a site runs, parsed and validated; unknown keys refused. The format is specified in
docs/SITE.md. What each process runs is checked too, as its child will find it: a ``module``
must be importable (found, not imported), a ``command``'s executable must exist and be
executable; a process that cannot start would otherwise be restarted for ever.

Every error is a SiteConfigError naming the file and the dotted key, e.g.
``/etc/smx/site.toml: extensions.meter.devices[1]: invalid device id 'PV' ...``.
"""

from __future__ import annotations

import datetime as dt
import grp
import importlib
import importlib.machinery
import math
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

from smx.identity import SERVER_NAME, Identity, IdentityError
from smx.names import DEVICE_ID, Glob, InvalidName
from smx.process_env import RunPaths
from smx.settings import (
    ConfigError,
    check_keys,
    closest,
    dotted_key,
    duration,
    fmt_bytes,
    parse_size,
    show_value,
)
from smx.toml_text import toml_str
from trusted.core.config import CoreConfig, load_core_config
from trusted.policy import Policy, default_roles_text
from trusted.supervisor.isolation import site_group

__all__ = [
    "KINDS",
    "NO_ROLE",
    "RESERVED_NAMES",
    "ProcessSpec",
    "SiteConfig",
    "SiteConfigError",
    "SupervisorSettings",
    "load_site_config",
    "parse_site_config",
    "render_core_toml",
]

# Table name in site.toml -> process kind.
KINDS = {"extensions": "extension", "agents": "agent", "simulators": "simulator"}
DOMAIN_OF = {"extension": "trusted", "agent": "untrusted"}
DEFAULT_ROLE = {"extension": "trusted-extension", "agent": "untrusted-agent"}
# `role = "none"`: no role; the process gets exactly its devices, `reads`, `requests` and (an
# agent) `writes`, plus an agent's own health point `<name>/ext.state`.
NO_ROLE = "none"
# The core's own certificate, the operator's CLI, the supervisor's own certificate, and `core`
# (the core writes core/* points itself, and its log is logs/core.log).
RESERVED_NAMES = (SERVER_NAME, "admin", "supervisor", "core")

_TOP_KEYS = ("site", "home", "core", "supervisor", *KINDS)
_SUPERVISOR_KEYS = (
    "backoff_initial",
    "backoff_max",
    "stable_after",
    "stop_timeout",
    "health_timeout",
    "log_max_size",
    "log_rate",
    "volatile_dir",
    "core_nice",
    "fork_server",
)
_CLIENT_KEYS = (
    "module",
    "command",
    "devices",
    "reads",
    "requests",
    "writes",
    "role",
    "enabled",
    "config",
    "os_groups",
)
_SIMULATOR_KEYS = ("module", "command", "enabled", "config", "os_groups")
# OS groups that give root's power or other users' data: never handed to a process.
_FORBIDDEN_GROUPS = frozenset(
    {"root", "sudo", "wheel", "admin", "adm", "shadow", "disk", "kmem", "docker", "lxd", "staff"}
)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# The directory holding the `trusted` package: a child has it on PYTHONPATH (runner.py).
_ROOT = Path(__file__).resolve().parents[2]


class SiteConfigError(ConfigError):
    """site.toml is missing, not TOML, or has a bad or unknown key (named in the message)."""


@dataclass(frozen=True)
class SupervisorSettings:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 30.0
    stop_timeout: float = 5.0
    health_timeout: float = 15.0
    log_max_size: int = 10 * 1024 * 1024  # a process's log moves to .log.1 beyond this
    log_rate: int = 8 * 1024  # bytes/s of a process's output written; the rest is dropped
    # A directory on a tmpfs for the files rewritten every few seconds (docs/SITE.md): None
    # keeps them in run/ (on the SD card).
    volatile_dir: Path | None = None
    # The core's CPU priority (nice value) under `smx run` as root: every process waits on it,
    # so a busy extension must not delay it (docs/SITE.md).
    core_nice: int = -5
    # Fork the Python extensions (and agents) of a trust domain from one pre-imported process
    # instead of starting each from scratch: less memory per process (docs/SITE.md).
    fork_server: bool = True


@dataclass(frozen=True)
class ProcessSpec:
    """One extension, agent or simulator of the site."""

    name: str
    kind: str  # extension | agent | simulator
    module: str | None = None
    command: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    role: str | None = None  # None for simulators; NO_ROLE ("none"): no role at all
    enabled: bool = True
    config: Mapping[str, Any] = field(default_factory=dict)
    # Extra OS groups of its user under isolation (e.g. "dialout" for a serial port).
    os_groups: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()  # setpoint patterns it may request
    writes: tuple[str, ...] = ()  # an agent's own points it may write (<name>/...)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles of its policy binding: its role, or none for NO_ROLE (and simulators)."""
        if self.role is None or self.role == NO_ROLE:
            return ()
        return (self.role,)

    @property
    def domain(self) -> str | None:
        """``trusted`` or ``untrusted`` for clients of the core; None for simulators."""
        return DOMAIN_OF.get(self.kind)

    def argv(self, python: str) -> list[str]:
        """The command line: ``<python> -m <module>`` (``<python> -OO -m <module>`` but for a
        simulator: `PYTHON_FLAGS`) or the configured command."""
        if self.module is not None:
            flags = () if self.kind == "simulator" else PYTHON_FLAGS
            return [python, *flags, "-m", self.module]
        assert self.command is not None
        return list(self.command)


# The supervised Python processes run without docstrings and asserts: ~1-4 MiB less each, the
# S4G site under 200 MB (docs/PERFORMANCE.md, run 15). Simulators, demo and test stand-ins
# that print their docstrings, run plain. Installations compile for it (docs/DEPLOY.md).
OPTIMIZE_FLAGS = ("-OO",)
# -P: the working directory (a process's own, writable run/<name>/) is not on its import path,
# so nothing a process leaves there is imported by its restart (as for a forked child).
PYTHON_FLAGS = (*OPTIMIZE_FLAGS, "-P")


@dataclass(frozen=True)
class SiteConfig:
    site: str
    home: Path
    source: Path  # the site.toml it came from
    core: CoreConfig  # as the core will read it from <home>/core.toml
    core_table: Mapping[str, Any]  # the [core] table as written, for render_core_toml
    supervisor: SupervisorSettings
    processes: tuple[ProcessSpec, ...]  # every table, disabled ones included, in file order

    @property
    def paths(self) -> RunPaths:
        """The site's run files; with a volatile directory, the site's own directory in it,
        named like the site's group (two sites of one machine never share it)."""
        root = self.supervisor.volatile_dir
        if root is None:
            return RunPaths(self.home)
        return RunPaths(self.home, root / site_group(self.site, self.home))

    def of_kind(self, kind: str) -> list[ProcessSpec]:
        """The enabled processes of one kind, in file order."""
        return [p for p in self.processes if p.kind == kind and p.enabled]

    @property
    def clients(self) -> list[ProcessSpec]:
        """The enabled extensions and agents (the processes with a certificate)."""
        return [p for p in self.processes if p.domain is not None and p.enabled]


# --------------------------------------------------------------------------- value checks


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SiteConfigError(f"{key}: expected a table [{key}], got {show_value(value)}")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SiteConfigError(f"{key}: expected a non-empty string, got {show_value(value)}")
    if "\0" in value:
        raise SiteConfigError(f"{key}: contains a NUL character")
    return value


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise SiteConfigError(f"{key}: expected an array of strings, got {show_value(value)}")
    return [_string(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise SiteConfigError(f"{key}: expected true or false, got {show_value(value)}")
    return value


def _json_ready(value: Any, key: str) -> Any:
    """``value`` as JSON can hold it: dates and times become ISO 8601 strings; nan and inf are
    refused (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _json_ready(v, f"{key}.{dotted_key(k)}") for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise SiteConfigError(f"{key}: {value!r} cannot be handed to the process as JSON")
    return value


def _default_roles() -> tuple[str, ...]:
    return tuple(Policy.from_toml(default_roles_text(), "default_policy.toml").roles)


# --------------------------------------------------------------------------- sections


def _supervisor(data: dict[str, Any]) -> SupervisorSettings:
    table = _table(data.get("supervisor", {}), "supervisor")
    check_keys(table, _SUPERVISOR_KEYS, "supervisor.")
    d = SupervisorSettings()

    def get(name: str, default: float, lo: float, hi: float) -> float:
        return duration(table.get(name, default), f"supervisor.{name}", lo, hi)

    def size(name: str, default: int, lo: int) -> int:
        n = parse_size(table.get(name, default), f"supervisor.{name}")
        if n < lo:
            raise SiteConfigError(
                f"supervisor.{name}: at least {fmt_bytes(lo)}, got {fmt_bytes(n)}"
            )
        return n

    settings = SupervisorSettings(
        backoff_initial=get("backoff_initial", d.backoff_initial, 0.01, 3600),
        backoff_max=get("backoff_max", d.backoff_max, 0.01, 86400),
        stable_after=get("stable_after", d.stable_after, 0.1, 86400),
        stop_timeout=get("stop_timeout", d.stop_timeout, 0.1, 600),
        health_timeout=get("health_timeout", d.health_timeout, 0.5, 600),
        log_max_size=size("log_max_size", d.log_max_size, 64 * 1024),
        log_rate=size("log_rate", d.log_rate, 1024),
        volatile_dir=_volatile_dir(table.get("volatile_dir")),
        core_nice=_nice(table.get("core_nice", d.core_nice), "supervisor.core_nice"),
        fork_server=_bool(table.get("fork_server", d.fork_server), "supervisor.fork_server"),
    )
    if settings.backoff_max < settings.backoff_initial:
        raise SiteConfigError(
            f"supervisor.backoff_max: must not be less than backoff_initial "
            f"({settings.backoff_initial:g}s), got {show_value(table.get('backoff_max'))}"
        )
    return settings


def _nice(raw: Any, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not -20 <= raw <= 19:
        raise SiteConfigError(
            f"{what}: a nice value, an integer from -20 (first) to 19 (last), got {show_value(raw)}"
        )
    return raw


def _volatile_dir(raw: Any) -> Path | None:
    if raw is None:
        return None
    text = _string(raw, "supervisor.volatile_dir")
    path = Path(os.path.expanduser(text))
    if not path.is_absolute() or ".." in path.parts:
        raise SiteConfigError(
            "supervisor.volatile_dir: an absolute path without `..` (a directory on a tmpfs, "
            f'e.g. "/run/smx"), got {show_value(raw)}'
        )
    return Path(os.path.normpath(path))


def _process(
    name: str, raw: Any, kind: str, section: str, base: Path, roles: tuple[str, ...]
) -> ProcessSpec:
    prefix = f"{section}.{dotted_key(name)}"
    try:
        Identity.check_name(name)
    except IdentityError as err:
        raise SiteConfigError(f"{prefix}: {err}") from err
    if name in RESERVED_NAMES:
        raise SiteConfigError(
            f"{prefix}: the name {name!r} is reserved ({', '.join(RESERVED_NAMES)})"
        )
    table = _table(raw, prefix)
    client = kind != "simulator"
    check_keys(table, _CLIENT_KEYS if client else _SIMULATOR_KEYS, f"{prefix}.")

    if ("module" in table) == ("command" in table):
        raise SiteConfigError(f"{prefix}: set exactly one of `module` and `command`")
    module = command = None
    if "module" in table:
        module = _string(table["module"], f"{prefix}.module")
        if _MODULE.fullmatch(module) is None:
            raise SiteConfigError(
                f"{prefix}.module: {show_value(module)} is not a Python module name like "
                '"extensions.smm"'
            )
    else:
        args = _strings(table["command"], f"{prefix}.command")
        if not args:
            raise SiteConfigError(f"{prefix}.command: expected at least the executable")
        if "/" in args[0] and not os.path.isabs(args[0]):
            args[0] = str(base / args[0])
        command = tuple(args)

    config = _json_ready(_table(table.get("config", {}), f"{prefix}.config"), f"{prefix}.config")
    enabled = _bool(table.get("enabled", True), f"{prefix}.enabled")
    os_groups = _os_groups(table.get("os_groups", []), f"{prefix}.os_groups")
    if not client:
        return ProcessSpec(
            name, kind, module, command, enabled=enabled, config=config, os_groups=os_groups
        )

    devices = _strings(table.get("devices", [name]), f"{prefix}.devices")
    if not devices:
        raise SiteConfigError(f"{prefix}.devices: expected at least one device id")
    for i, dev in enumerate(devices):
        try:
            Identity.check_name(dev)
        except IdentityError:
            raise SiteConfigError(
                f"{prefix}.devices[{i}]: invalid device id {show_value(dev)}: use {DEVICE_ID}"
            ) from None
        if dev in devices[:i]:
            raise SiteConfigError(f"{prefix}.devices[{i}]: {dev!r} is listed twice")
        if dev in RESERVED_NAMES:
            raise SiteConfigError(f"{prefix}.devices[{i}]: the device id {dev!r} is reserved")
    reads = _patterns(table.get("reads", []), f"{prefix}.reads")
    requests = _patterns(table.get("requests", []), f"{prefix}.requests")
    if "writes" in table and kind != "agent":
        raise SiteConfigError(
            f"{prefix}.writes: an extension writes the points of its devices: list them in "
            "`devices`"
        )
    writes = _patterns(table.get("writes", []), f"{prefix}.writes")
    for i, pattern in enumerate(writes):
        if not pattern.startswith(f"{name}/"):
            raise SiteConfigError(
                f"{prefix}.writes[{i}]: {pattern!r} is not one of the agent's own points: an "
                f"agent writes only under {name}/ (its state points, e.g. {name}/mqtt)"
            )
    role = _string(table.get("role", DEFAULT_ROLE[kind]), f"{prefix}.role")
    if role not in roles and role != NO_ROLE:
        raise SiteConfigError(
            f"{prefix}.role: unknown role {role!r} (roles: {', '.join(roles)}, or "
            f'"{NO_ROLE}" for exactly its devices, reads, requests and writes)'
        )
    return ProcessSpec(
        name,
        kind,
        module,
        command,
        tuple(devices),
        tuple(reads),
        role,
        enabled,
        config,
        os_groups,
        tuple(requests),
        tuple(writes),
    )


def _patterns(raw: Any, key: str) -> list[str]:
    """Point patterns (docs/DATA-MODEL.md globs)."""
    patterns = _strings(raw, key)
    for i, pattern in enumerate(patterns):
        try:
            Glob(pattern)
        except InvalidName as err:
            raise SiteConfigError(f"{key}[{i}]: {err}") from err
    return patterns


def _os_groups(raw: Any, key: str) -> tuple[str, ...]:
    names = _strings(raw, key)
    for i, group in enumerate(names):
        if group in _FORBIDDEN_GROUPS:
            raise SiteConfigError(
                f"{key}[{i}]: {group!r} would give the process root's power or other users' "
                "data; give it only what its devices need (e.g. dialout for a serial port)"
            )
        try:
            grp.getgrnam(group)
        except KeyError:
            raise SiteConfigError(f"{key}[{i}]: no OS group named {group!r}") from None
    return tuple(names)


def _processes(data: dict[str, Any], base: Path) -> tuple[ProcessSpec, ...]:
    roles = _default_roles()
    out: list[ProcessSpec] = []
    seen: dict[str, str] = {}
    owners: dict[str, str] = {}
    for section, kind in KINDS.items():
        for name, raw in _table(data.get(section, {}), section).items():
            spec = _process(name, raw, kind, section, base, roles)
            if name in seen:
                raise SiteConfigError(
                    f"{section}.{dotted_key(name)}: the name {name!r} is already used "
                    f"in [{seen[name]}]"
                )
            seen[name] = section
            if spec.enabled:
                for i, dev in enumerate(spec.devices):
                    if dev in owners:
                        raise SiteConfigError(
                            f"{section}.{name}.devices[{i}]: device {dev!r} is already owned "
                            f"by {owners[dev]!r}"
                        )
                    owners[dev] = name
            out.append(spec)
    # A client's own name is a device prefix its role lets it write ({name}/...): it may not be
    # a device another process owns, or an agent named `smm` could write smm/* points.
    for spec in out:
        owner = owners.get(spec.name)
        if spec.domain is not None and spec.enabled and owner not in (None, spec.name):
            raise SiteConfigError(
                f"{seen[spec.name]}.{dotted_key(spec.name)}: the name {spec.name!r} is a device "
                f"owned by {owner!r} (its role would let it write {spec.name}/...): rename one"
            )
    return tuple(out)


# --------------------------------------------------------------------------- programs


def _module_path(home: Path) -> list[str]:
    """Where a child looks for its module: ``python -m`` in the site home (or the home on
    PYTHONPATH when isolated), the project root on PYTHONPATH, then the interpreter's own path
    (the caller's PYTHONPATH, the standard library, site-packages). This process's own
    directory (the working directory or its script's) is not the child's."""
    own = {"", os.getcwd(), os.path.dirname(os.path.abspath(sys.argv[0] or "."))}
    out = [str(home), str(_ROOT)]
    out += [p for p in sys.path if p not in own and p not in out]
    return out


def _find_one(name: str, path: list[str], *, top: bool) -> ModuleSpec | None:
    """The spec of ``name`` from the import system's finders, without importing anything:
    the path finder looks in ``path`` (the child's path for a top-level name, else the parent
    package's locations); the others (builtins, frozen modules, an editable install) as they
    would in the child."""
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = importlib.machinery.PathFinder.find_spec(name, path)
            else:
                find = getattr(finder, "find_spec", None)
                spec = find(name, None if top else path) if find is not None else None
        except Exception:  # a third-party finder's failure says nothing about the module
            continue
        if spec is not None:
            return spec
    return None


def _find_module(name: str, search: list[str]) -> tuple[ModuleSpec | None, str, list[str] | None]:
    """Find ``name`` level by level, as ``import`` would but without running any package's
    ``__init__``. Returns its spec, or None with the first dotted prefix not found and the
    locations it was looked for in (None when its parent is a module, not a package)."""
    parts = name.split(".")
    where = search
    for i in range(len(parts)):
        dotted = ".".join(parts[: i + 1])
        spec = _find_one(dotted, where, top=i == 0)
        if spec is None:
            return None, dotted, where
        if i == len(parts) - 1:
            return spec, "", []
        if spec.submodule_search_locations is None:
            return None, ".".join(parts[: i + 2]), None
        where = list(spec.submodule_search_locations)
    raise AssertionError("unreachable: a module name has at least one part")


def _suggestion(module: str, missing: str, where: list[str], search: list[str]) -> str | None:
    """The nearest name to the part of ``module`` not found, among the modules where it was
    looked for, with the rest of the name when that is found too."""
    parent, _, last = missing.rpartition(".")
    try:
        names = [m.name for m in pkgutil.iter_modules(where)]
    except Exception:  # an unreadable entry of the path: no suggestion
        return None
    close = closest(last, names)
    if not close:
        return None
    near = f"{parent}.{close}" if parent else close
    whole = near + module[len(missing) :]
    return whole if _find_module(whole, search)[0] is not None else near


def _check_module(module: str, key: str, home: Path) -> None:
    search = _module_path(home)
    spec, missing, where = _find_module(module, search)
    if spec is None:
        # A module created since this process looked at its directory: look again.
        importlib.invalidate_caches()
        spec, missing, where = _find_module(module, search)
    if spec is None:
        problem = f"{key}: no module named {module!r}"
        if where is None:
            parent = missing.rpartition(".")[0]
            raise SiteConfigError(f"{problem}: {parent!r} is a module, not a package")
        if missing != module:
            problem += f": no package {missing!r}"
        near = _suggestion(module, missing, where, search)
        if near is not None:
            raise SiteConfigError(f"{problem} (did you mean {near!r}?)")
        parent, _, last = missing.rpartition(".")
        if parent:
            places = " or ".join(where) or "nowhere"
            raise SiteConfigError(f"{problem}: package {parent!r} ({places}) has no {last!r}")
        raise SiteConfigError(
            f"{problem} in the site home {home}, the project {_ROOT} or the Python path of "
            f"{sys.executable}"
        )
    if spec.submodule_search_locations is not None:
        # `python -m package` runs the package's __main__.
        main = _find_one(f"{module}.__main__", list(spec.submodule_search_locations), top=False)
        if main is None:
            raise SiteConfigError(
                f"{key}: {module!r} is a package without a __main__ module: name the module "
                "that runs the process"
            )


def _check_command(executable: str, key: str) -> None:
    if "/" in executable:  # made absolute (relative to the site file) when parsed
        if not os.path.exists(executable):
            raise SiteConfigError(f"{key}: {executable}: no such file")
        if not os.path.isfile(executable) or not os.access(executable, os.X_OK):
            raise SiteConfigError(f"{key}: {executable} is not an executable file")
    elif shutil.which(executable) is None:
        raise SiteConfigError(
            f"{key}: {executable!r} is not an executable found on PATH "
            f"({os.environ.get('PATH', os.defpath)}); give its path"
        )


def _check_programs(processes: tuple[ProcessSpec, ...], home: Path) -> None:
    """Each enabled process can be started: its module is found as its child will look for
    it, or its command's executable exists and may be run. A disabled process is not run."""
    section = {kind: name for name, kind in KINDS.items()}
    for spec in processes:
        if not spec.enabled:
            continue
        prefix = f"{section[spec.kind]}.{dotted_key(spec.name)}"
        if spec.module is not None:
            _check_module(spec.module, f"{prefix}.module", home)
        elif spec.command is not None:
            _check_command(spec.command[0], f"{prefix}.command[0]")


# --------------------------------------------------------------------------- core.toml


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{dotted_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_core_toml(site: str, core_table: Mapping[str, Any], source: str = "site.toml") -> str:
    """The text of ``<home>/core.toml``: ``site`` plus the [core] table of site.toml."""
    lines = [f"# Written by `smx run` from {source} on every start: edit that file instead."]
    lines.append(f"site = {toml_str(site)}")
    tables = {k: v for k, v in core_table.items() if isinstance(v, dict)}
    lines += [
        f"{dotted_key(k)} = {_toml_value(v)}" for k, v in core_table.items() if k not in tables
    ]
    for name, table in tables.items():
        lines += ["", f"[{dotted_key(name)}]"]
        lines += [f"{dotted_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _core(site: str, table: dict[str, Any], home: Path) -> CoreConfig:
    """Validate the [core] table exactly as the core will read it, via load_core_config."""
    if "site" in table:
        raise SiteConfigError("core.site: set the site at the top level (site = ...)")
    with tempfile.TemporaryDirectory(prefix="smx-site-") as tmp:
        path = Path(tmp) / "core.toml"
        path.write_text(render_core_toml(site, table), encoding="utf-8")
        try:
            return load_core_config(path, home=home)
        except ConfigError as err:
            message = str(err).removeprefix(f"{path}: ")
            raise SiteConfigError(f"core.{message}") from err


# --------------------------------------------------------------------------- entry points


def parse_site_config(text: str, source: str, base: Path) -> SiteConfig:
    """The validated config from TOML ``text``; ``base`` is the directory of the file (the
    default home, and what relative paths are relative to). Errors name ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SiteConfigError(f"{source}: invalid TOML: {err}") from err
    except (ValueError, RecursionError) as err:  # int() limits, absurd nesting
        raise SiteConfigError(f"{source}: invalid TOML: {err}") from err
    base = Path(base).resolve()
    try:
        check_keys(data, _TOP_KEYS, "")
        if "site" not in data:
            raise SiteConfigError('site: required (the site id, e.g. site = "usm-0017")')
        site = _string(data["site"], "site")
        try:
            Identity.check_site(site)
        except IdentityError as err:
            raise SiteConfigError(f"site: {err}") from err
        home = base
        if "home" in data:
            home = Path(base, os.path.expanduser(_string(data["home"], "home"))).resolve()
        core_table = _table(data.get("core", {}), "core")
        config = SiteConfig(
            site=site,
            home=home,
            source=Path(source),
            core=_core(site, core_table, home),
            core_table=core_table,
            supervisor=_supervisor(data),
            processes=_processes(data, base),
        )
        _check_programs(config.processes, home)
    except ConfigError as err:
        raise SiteConfigError(f"{source}: {err}") from err
    return config


def load_site_config(path: Path | str) -> SiteConfig:
    """Read and validate ``path``; every problem is a SiteConfigError naming the file."""
    path = Path(path).absolute()
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SiteConfigError(f"{path}: cannot read site file: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SiteConfigError(f"{path}: not UTF-8 text (byte {err.start})") from err
    return parse_site_config(text, str(path), path.parent)
