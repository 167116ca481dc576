"""The contracts a simulator or a tiny process needs do not drag grpc in (~20 MB per process on
a 1 GB board): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def _heavy_after(imports: str, heavy: tuple[str, ...]) -> str:
    """Which of `heavy` a fresh interpreter has loaded after running `imports`."""
    code = f"import sys\n{imports}\nprint(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_light_contracts_load_neither_grpc_nor_protobuf():
    imports = (
        "import smx.process_env, smx.health, smx.files, smx.names, smx.vocabulary, smx.settings\n"
        "import examples.battery.simulator"
    )
    assert _heavy_after(imports, ("grpc", "google.protobuf", "cryptography")) == ""


def _loaded_by(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    code = (
        "import sys\n"
        "from trusted.cli.main import build_parser\n"
        f"build_parser({argv!r}).parse_args({argv!r})\n"
        f"print(','.join(m for m in {modules!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_long_running_commands_load_only_what_they_use():
    """`smx run` supervises a site for months: no cryptography (the CA lives in a provisioning
    child), no sqlite3, no rich; the client commands neither."""
    heavy = ("cryptography", "sqlite3", "rich", "trusted.core.audit", "trusted.pki")
    assert _loaded_by(["--home", "/x", "run", "--config", "site.toml"], heavy) == []
    assert _loaded_by(["status", "--home", "/x"], heavy) == []
    assert _loaded_by(["points", "get", "a/b"], heavy) == []


def test_the_supervisor_and_the_core_load_no_package_metadata():
    """`smx --version` looks the version up when asked: importlib.metadata (email, zipfile,
    csv: ~2-3 MiB) stays out of `smx run` and the core, which run for months; so do
    importlib.resources (tempfile, shutil) and difflib (only for a mistake's hint); the core
    reads its own RSS without psutil. (The core has `email.utils` from cryptography.x509.)"""
    heavy = ("importlib.metadata", "importlib.resources", "zipfile", "csv", "difflib")
    for argv, module, more in (
        (["--home", "/x", "run", "--config", "site.toml"], "trusted.supervisor.runner", ()),
        (["--home", "/x", "core"], "trusted.core.server", ("psutil", "ctypes.util")),
    ):
        imports = (
            "from trusted.cli.main import build_parser\n"
            f"build_parser({argv!r}).parse_args({argv!r})\n"
            f"import {module}"
        )
        assert _heavy_after(imports, heavy + more) == "", argv


def test_processes_load_no_package_metadata_nor_urllib_request():
    """The SDK defers what websockets and paho-mqtt import for nothing (smx.deferred_imports),
    and SunSpec models are read beside pysunspec2, not through importlib.resources."""
    heavy = ("zipfile", "csv", "http.client", "difflib")
    for module in (
        "untrusted.gui.agent",
        "untrusted.lessag.agent",
        "extensions.fronius",
        "extensions.smm",
        "extensions.energy_router",
        "extensions.remote_usm",
    ):
        assert _heavy_after(f"import {module}", heavy) == "", module


def test_the_supervisor_loads_no_grpc():
    """`smx run` checks the core with its health file and a TLS handshake (stdlib ssl): grpc
    (~9 MB a process) and protobuf stay out of the supervisor, which runs for months. What
    `smx run` loads: the CLI with the run command, then the supervisor itself."""
    imports = (
        "from trusted.cli.main import build_parser\n"
        "argv = ['--home', '/x', 'run', '--config', 'site.toml']\n"
        "build_parser(argv).parse_args(argv)\n"
        "import trusted.supervisor.runner, trusted.supervisor.status"
    )
    assert _heavy_after(imports, ("grpc", "grpc_health", "google.protobuf", "smx.v1")) == ""


def test_help_still_lists_every_command():
    from trusted.cli.main import COMMANDS

    out = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    block = out.stdout.split("COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    listed = [ln.split()[0] for ln in block.splitlines() if ln[:4] == "    " and ln[4:5] != " "]
    assert sorted(listed) == sorted(COMMANDS)
