"""The systemd units of deploy/systemd/: systemd itself parses them (`systemd-analyze verify`,
where it is installed), they carry the hardening docs/SITE.md ("Isolation") promises, and what
they start exists in the product (`smx run`, `smx core`, the provisioning module); and the
site file docs/DEPLOY.md gives for a Raspberry Pi is accepted."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trusted.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
PREFIX = "/opt/smx/.venv/bin/"  # where docs/DEPLOY.md installs SMX
PLACEHOLDER = "smx-HHHHHH"  # the site group in the per-process units, replaced at install
HOME = "/var/lib/smx"
SITE_FILE = "/etc/smx/site.toml"
# What the supervisor needs (docs/SITE.md, "Isolation"): drop privileges (SETUID, SETGID and
# SETPCAP to empty a child's bounding set), give files to their owners (CHOWN, FOWNER), signal
# its children (KILL), read their files (DAC_*), a child's private mount (SYS_ADMIN), and the
# core's higher CPU priority (SYS_NICE).
SUPERVISOR_CAPS = {
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_ADMIN",
    "CAP_SYS_NICE",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd's syntax: comments, continuation lines,
    repeated keys; an empty assignment resets the list, as systemd does for most list keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    lines = iter(path.read_text().splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}: bad section line {raw!r}"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {raw!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {raw!r} is not KEY=VALUE"
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
            values.append("")
    return sections


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit.get(section, {}).get(key)
    assert values is not None, f"{key}= missing in [{section}]"
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


UNIT_NAMES = ("smx.service", "smx-core.service", "smx-client@.service")


@pytest.fixture(scope="module")
def units() -> dict[str, dict[str, dict[str, list[str]]]]:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(UNIT_NAMES)
    return {name: parse_unit(UNITS / name) for name in UNIT_NAMES}


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_every_unit_has_the_hardening_docs_site_md_promises(units, name):
    unit = units[name]
    for key, want in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("UMask", "0077"),
        ("SystemCallArchitectures", "native"),
    ):
        assert one(unit, key) == want, f"{name}: {key}={one(unit, key)}, docs/SITE.md says {want}"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    caps = set(one(unit, "CapabilityBoundingSet").split())
    writable = one(unit, "ReadWritePaths").split()
    if name == "smx.service":
        # Root, but only with what it needs; everything it writes is the site home.
        assert caps <= SUPERVISOR_CAPS, f"capabilities beyond the supervisor's needs: {caps}"
        assert "CAP_SETPCAP" in caps  # else a child cannot empty its bounding set
        assert "CAP_SYS_NICE" in caps  # else the core cannot start at supervisor.core_nice
        assert "User" not in unit["Service"]
        assert writable == [HOME]
    else:
        # Its own provisioned user in the site group, no capability at all.
        assert caps == set() and one(unit, "AmbientCapabilities") == ""
        user, group = one(unit, "User"), one(unit, "SupplementaryGroups")
        assert user not in ("", "root", "0") and group == PLACEHOLDER
        assert user == f"{PLACEHOLDER}-{'core' if name == 'smx-core.service' else '%i'}"
        assert one(unit, "RestrictSUIDSGID") == "yes"
        assert writable == ([HOME] if name == "smx-core.service" else [f"{HOME}/run/%i"])


def _smx_argv(command: str) -> list[str]:
    """The arguments after `smx` in an ExecStart line (which must start it from PREFIX)."""
    binary, *argv = command.split()
    assert binary == PREFIX + "smx", f"{command!r} does not start {PREFIX}smx"
    return argv


def test_exec_lines_start_commands_that_exist_in_the_product(units):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["smx"] == "trusted.cli.main:main"  # what installs PREFIX/smx
    parser = build_parser()

    def parses(argv: list[str]) -> str:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"`smx {' '.join(argv)}` does not parse: {err.getvalue()}")
        return str(args.command)

    supervisor = units["smx.service"]["Service"]
    assert parses(_smx_argv(one(units["smx.service"], "ExecStart"))) == "run"
    assert _smx_argv(one(units["smx.service"], "ExecStart"))[-2:] == ["--config", SITE_FILE]
    assert parses(_smx_argv(one(units["smx-core.service"], "ExecStart"))) == "core"
    assert _smx_argv(one(units["smx-core.service"], "ExecStart"))[:2] == ["--home", HOME]

    # Provisioning, with full privileges ("+"), as the supervisor itself runs it.
    (pre,) = supervisor["ExecStartPre"]
    # -P: root never imports a module from the directory it happens to start in.
    assert pre.startswith("+" + PREFIX + "python -P -m ")
    module, *rest = pre.split()[3:]
    assert rest == ["--isolate", SITE_FILE]
    assert importlib.util.find_spec(module) is not None
    r = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "--isolate" in r.stdout and "site_toml" in r.stdout

    client = one(units["smx-client@.service"], "ExecStart")
    assert client == PREFIX + "python -OO -P -m ${SMX_MODULE}"  # as the supervisor starts it
    assert "SMX_MODULE" in (UNITS / "smx-client@.service").read_text().split("[Unit]")[0]


def test_systemd_parses_the_units(tmp_path):
    """`systemd-analyze verify` on copies whose /opt/smx/.venv is this checkout's virtualenv
    (it checks that each ExecStart program exists): any line it prints about them fails."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed (Debian package systemd); the units are still "
            "checked by the parser tests of this file"
        )
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "smx").exists(), f"no smx in {bin_dir}: install the project (pip -e .)"
    for name in UNIT_NAMES:
        text = (UNITS / name).read_text().replace(PREFIX, f"{bin_dir}/")
        (tmp_path / name).write_text(text)
    (tmp_path / "smx-client@meter.service").symlink_to("smx-client@.service")
    paths = [str(tmp_path / n) for n in ("smx.service", "smx-core.service")]
    r = subprocess.run(
        [analyze, "verify", "--man=no", *paths, str(tmp_path / "smx-client@meter.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if "smx" in line or str(tmp_path) in line
    ]
    assert r.returncode == 0 and ours == [], r.stdout + r.stderr


def test_systemd_analyze_is_heard_when_a_unit_is_wrong(tmp_path):
    """The check above would notice a mistake (here a misspelt key): systemd says so."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    bin_dir = Path(sys.executable).parent
    text = (UNITS / "smx-core.service").read_text().replace(PREFIX, f"{bin_dir}/")
    (tmp_path / "smx-core.service").write_text(text.replace("PrivateTmp=", "PrivateTemp="))
    r = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "smx-core.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "PrivateTemp" in r.stdout + r.stderr


def test_the_site_file_of_the_deploy_guide_is_accepted(tmp_path):
    """docs/DEPLOY.md's site file for a Pi: `smx run` accepts it, with the settings it says."""
    from trusted.supervisor.site_config import parse_site_config

    guide = (ROOT / "docs" / "DEPLOY.md").read_text()
    section = guide.split("## 4.", 1)[1].split("\n## ", 1)[0]
    text = section.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = parse_site_config(text, "site.toml", tmp_path)
    assert cfg.home == Path(HOME)
    assert cfg.core.history.flush_interval == 10.0
    assert cfg.core.history.max_bytes == 1024**3
    assert (cfg.core.audit_max_bytes, cfg.core.audit_keep) == (16 * 1024**2, 4)
    assert (cfg.supervisor.log_max_size, cfg.supervisor.log_rate) == (2 * 1024**2, 2048)
    assert [p.name for p in cfg.processes] == ["smm"]


def test_the_placeholder_has_the_shape_of_a_site_group():
    """Replacing the units' placeholder by the site's group gives the users provisioning makes
    (docs/SITE.md: smx-<h>, smx-<h>-core, smx-<h>-<name>)."""
    from trusted.supervisor.isolation import core_user, site_group, user_name

    group = site_group("usm-0017", Path(HOME))
    assert len(group) == len(PLACEHOLDER) and group.startswith("smx-")
    assert core_user("usm-0017", Path(HOME)) == f"{group}-core"
    assert user_name("usm-0017", Path(HOME), "smm") == f"{group}-smm"
