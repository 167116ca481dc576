"""The process contract between the supervisor (`smx run`) and the processes it starts: the
`SMX_*` environment variables and the site's run directory. The supervisor writes the
environment with `ProcessEnv.to_environ()`, every extension and agent reads it back with
`ProcessEnv.from_environ()`; nobody spells a variable name anywhere else.

=================  ==============================================================================
SMX_SITE           the site id, e.g. ``usm-0017``
SMX_NAME           the process's name (its table key in site.toml = its certificate's name)
SMX_DOMAIN         ``trusted`` (extensions) or ``untrusted`` (agents)
SMX_TARGET         the core's socket as a gRPC target: ``unix:///abs/path/core.sock``
SMX_CA             absolute path of the site CA certificate
SMX_CERT, SMX_KEY  absolute paths of the process's own certificate and private key (0600)
SMX_DEVICES        the device ids it owns, comma-separated (``devices``, default its name)
SMX_CONFIG         absolute path of a JSON file (0600) holding its ``config`` table:
                   ``<home>/run/<name>.config.json``
SMX_HEALTH_FILE    ``<home>/run/<name>.health.json``, or under ``smx run`` as root
                   ``<home>/run/<name>/health.json``, or with a volatile directory (site.toml
                   ``[supervisor] volatile_dir``) ``<volatile>/<name>/health.json``: see
                   smx.health and `RunPaths`
=================  ==============================================================================

Processes start in the site directory (their working directory); relative paths in a process's
config are relative to it. Simulators (demo and test stand-ins for devices, no certificate) get
SMX_NAME and SMX_CONFIG only: `simulator_environ()` / `load_config()`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a simulator reads its config here without loading grpc (~20 MB)
    from smx.client import Credentials

__all__ = [
    "ENV_CA",
    "ENV_CERT",
    "ENV_CONFIG",
    "ENV_DEVICES",
    "ENV_DOMAIN",
    "ENV_HEALTH_FILE",
    "ENV_KEY",
    "ENV_NAME",
    "ENV_SITE",
    "ENV_TARGET",
    "ProcessEnv",
    "RunPaths",
    "SetupError",
    "load_config",
    "require_readable",
    "simulator_environ",
]

ENV_SITE = "SMX_SITE"
ENV_NAME = "SMX_NAME"
ENV_DOMAIN = "SMX_DOMAIN"
ENV_TARGET = "SMX_TARGET"
ENV_CA = "SMX_CA"
ENV_CERT = "SMX_CERT"
ENV_KEY = "SMX_KEY"
ENV_DEVICES = "SMX_DEVICES"
ENV_CONFIG = "SMX_CONFIG"
ENV_HEALTH_FILE = "SMX_HEALTH_FILE"
_REQUIRED = (ENV_NAME, ENV_TARGET, ENV_CA, ENV_CERT, ENV_KEY)


class SetupError(Exception):
    """The process cannot start: a missing variable or file, a certificate that cannot work, or
    a mistake in its config. The message says what to do."""


@dataclass(frozen=True)
class RunPaths:
    """The files of a site directory that the supervisor and its processes share.

    ``volatile``: the site's directory in memory (a tmpfs: site.toml ``[supervisor]
    volatile_dir``, one directory per site in it), or None. The files rewritten every few
    seconds (the health files, supervisor.json) live there instead of on the SD card; what must
    survive a reboot stays in `run` (the private directories). The names in `run` stay the
    readers' addresses: ``run/supervisor.json`` and ``run/<name>.health.json`` are then links
    into it, made at each start."""

    home: Path
    volatile: Path | None = None

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def socket(self) -> Path:
        """The core's Unix socket unless core.toml names another (`socket`)."""
        return self.home / "core.sock"

    @property
    def status(self) -> Path:
        """Where `smx status` reads supervisor.json (a link to `status_file` when volatile)."""
        return self.run / "supervisor.json"

    @property
    def status_file(self) -> Path:
        """Where the supervisor writes supervisor.json."""
        return self.status if self.volatile is None else self.volatile / "supervisor.json"

    @property
    def lock(self) -> Path:
        return self.run / "supervisor.lock"

    def config_file(self, name: str) -> Path:
        return self.run / f"{name}.config.json"

    def private_dir(self, name: str) -> Path:
        """Process `name`'s own directory, `run/<name>/` (private to its user under `smx run`
        as root): where it keeps what must survive its restarts."""
        return self.run / name

    def health_file(self, name: str) -> Path:
        """Process `name`'s health file as readers find it (a link when it lives elsewhere)."""
        return self.run / f"{name}.health.json"

    def volatile_dir(self, name: str) -> Path:
        """Process `name`'s own directory in `volatile` (its user's alone), for its health file
        and the temp file of each rewrite."""
        if self.volatile is None:
            raise ValueError("the site has no volatile directory")
        return self.volatile / name

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass(frozen=True)
class ProcessEnv:
    """What an extension or agent is given to start: who it is, where the core is, its files."""

    name: str
    target: str
    credentials: Credentials
    site: str = ""
    domain: str = "trusted"
    devices: tuple[str, ...] = ()  # empty: its name is its one device id
    home: Path | None = None  # the site directory; None: see site_dir
    config_file: Path | None = None
    health_file: Path | None = None

    @property
    def device_ids(self) -> tuple[str, ...]:
        return self.devices or (self.name,)

    @property
    def site_dir(self) -> Path:
        """The site directory: `home` when given, else the one whose run directory holds the
        config file, else the working directory (the supervisor starts processes there)."""
        if self.home is not None:
            return self.home
        if self.config_file is not None and self.config_file.parent.name == "run":
            return self.config_file.parent.parent
        return Path.cwd()

    def load_config(self) -> dict[str, Any]:
        """The process's `config` table from site.toml ({} when it has none)."""
        return {} if self.config_file is None else load_config(self.config_file)

    def to_environ(self) -> dict[str, str]:
        environ = {
            ENV_NAME: self.name,
            ENV_DOMAIN: self.domain,
            ENV_TARGET: self.target,
            ENV_CA: str(self.credentials.ca),
            ENV_CERT: str(self.credentials.cert),
            ENV_KEY: str(self.credentials.key),
            ENV_DEVICES: ",".join(self.device_ids),
        }
        optional = {
            ENV_SITE: self.site,
            ENV_CONFIG: self.config_file,
            ENV_HEALTH_FILE: self.health_file,
        }
        environ.update({k: str(v) for k, v in optional.items() if v})
        return environ

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProcessEnv:
        missing = [k for k in _REQUIRED if not environ.get(k)]
        if missing:
            raise SetupError(
                f"missing environment variables {', '.join(missing)}: start the process with "
                "`smx run` (which sets them), or set them by hand (see docs/SITE.md)"
            )

        def path(key: str) -> Path | None:
            return Path(environ[key]) if environ.get(key) else None

        return cls(
            name=environ[ENV_NAME],
            target=environ[ENV_TARGET],
            credentials=_credentials(
                Path(environ[ENV_CA]), Path(environ[ENV_CERT]), Path(environ[ENV_KEY])
            ),
            site=environ.get(ENV_SITE, ""),
            domain=environ.get(ENV_DOMAIN) or "trusted",
            devices=tuple(d for d in environ.get(ENV_DEVICES, "").split(",") if d),
            config_file=path(ENV_CONFIG),
            health_file=path(ENV_HEALTH_FILE),
        )


def simulator_environ(name: str, config_file: Path) -> dict[str, str]:
    """What a simulator is given: its name and its config file, nothing secret."""
    return {ENV_NAME: name, ENV_CONFIG: str(config_file)}


def load_config(path: Path | Mapping[str, str]) -> dict[str, Any]:
    """A config file (JSON object) as written by the supervisor; given an environment, the file
    SMX_CONFIG names ({} when it names none)."""
    if not isinstance(path, Path):
        if not path.get(ENV_CONFIG):
            return {}
        path = Path(path[ENV_CONFIG])
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SetupError(f"{ENV_CONFIG} {path}: cannot read the JSON config: {err}") from err
    if not isinstance(config, dict):
        raise SetupError(f"{ENV_CONFIG} {path}: expected a JSON object")
    return config


def _credentials(ca: Path, cert: Path, key: Path) -> Credentials:
    from smx.client import Credentials

    return Credentials(ca, cert, key)


def require_readable(files: Mapping[str, Path | None]) -> None:
    """Files a process needs (certificates, keys), checked at start: under `smx run` as root it
    has a user of its own, and files copied in as root are not its to read. One SetupError line
    naming the setting, the file, the user and the fix. `files`: setting name -> path (None:
    not configured)."""
    import pwd

    for label, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except PermissionError:
            user = pwd.getpwuid(os.geteuid()).pw_name
            raise SetupError(
                f"{label}: cannot read {path} as user {user}: give it to this process "
                f"(`chown {user} {path}`, and the directories on the way must let {user} "
                "through; keep a key at mode 0600)"
            ) from None
        except OSError as err:
            raise SetupError(f"{label}: cannot read {path}: {err.strerror}") from None
