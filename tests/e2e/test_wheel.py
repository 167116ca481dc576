"""The package as a user gets it: `python -m build` makes a source distribution and a wheel from it,
the wheel holds every module and data file of the product and the `smx` command, and it installs
with pip into a clean venv (no system site-packages, no dev tools) where `smx --version` and
`smx demo` run from a directory outside the checkout, with only the installed package to import.

The source tree is copied first (building writes build/ and *.egg-info beside the sources, and
other tests run from the checkout meanwhile). The dependencies come from the package index the
way `./dev` gets them; with no index reachable the install test is skipped, saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
VERSION = PYPROJECT["project"]["version"]
# The top-level packages the wheel ships: pyproject's `packages.find` include, "smx*" -> "smx".
PACKAGES = sorted(
    p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
)
# As in the demo's site (trusted/cli/demo_cmd.py): every one must be running when it stops.
PROCESSES = ("core", "battery", "smm", "lessag", "battery-sim", "meter-sim", "mqtt-broker")
# Not part of a source tree: caches, venvs, build output, the default site directory.
NOT_SOURCES = {"build", "dist", "site"}


def _copy_sources(dest: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}
        if Path(directory) == ROOT:
            left_out |= {n for n in names if n.startswith(".") or n in NOT_SOURCES}
        return left_out

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it, as `python -m build` makes them for a release."""
    src = _copy_sources(tmp_path_factory.mktemp("src") / "smx")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: setuptools and build come with the dev extra, nothing to download here.
    r = _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        timeout=120,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("smx-*.whl")
    return wheel


def test_the_wheel_holds_every_module_and_data_file_and_the_smx_command(dist: Path):
    with zipfile.ZipFile(_wheel(dist)) as z:
        shipped = set(z.namelist())
        entry_points = z.read(f"smx-{VERSION}.dist-info/entry_points.txt").decode()
        metadata = z.read(f"smx-{VERSION}.dist-info/METADATA").decode()
    expected = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix != ".pyc"
        and not path.name.startswith(".")
    }
    # Data files too (vocabulary, default policy, meter maps, stub types): any file that a
    # package reads beside its modules and pyproject's package-data does not name is missing.
    assert expected - shipped == set(), "not in the wheel (pyproject.toml package-data?)"
    assert {"smx/vocabulary.toml", "trusted/policy/default_policy.toml"} <= shipped
    assert any(n.startswith("extensions/smm/maps/") for n in shipped)
    assert any(n.startswith("smx/v1/") and n.endswith("_pb2.py") for n in shipped)
    assert not [n for n in shipped if n.startswith(("tests/", "bench/", "scripts/"))]
    assert re.search(r"^smx = trusted\.cli\.main:main$", entry_points, re.M), entry_points
    # Runtime dependencies only; the development tools are an extra.
    requires = re.findall(r"^Requires-Dist: ([\w.-]+)(.*)$", metadata, re.M)
    runtime = {name.lower() for name, rest in requires if "extra ==" not in rest}
    assert {"grpcio", "protobuf", "cryptography", "pymodbus", "psutil", "rich"} <= runtime
    assert not runtime & {"pytest", "hypothesis", "ruff", "mypy", "grpcio-tools", "build"}


def test_the_source_distribution_carries_the_api(dist: Path):
    (sdist,) = dist.glob("smx-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    protos = {p.relative_to(ROOT).as_posix() for p in (ROOT / "proto").rglob("*.proto")}
    assert protos and protos <= names
    assert {"pyproject.toml", "README.md", "smx/vocabulary.toml"} <= names


def _index_unreachable(tmp: Path) -> str | None:
    """Why pip cannot get a dependency from the package index, or None when it can."""
    dependency = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("pyserial"))
    r = _run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), dependency],
        timeout=120,
    )
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


@pytest.fixture
def install_dir():
    """Where the venv goes: readable by every user, as an install in /opt would be (as root the
    demo runs each process as its own user, who must reach the venv's python; tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="smx-wheel-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(300)
def test_the_wheel_installs_into_a_clean_venv_and_runs_the_demo_outside_the_checkout(
    dist: Path, install_dir: Path, tmp_path: Path
):
    reason = _index_unreachable(tmp_path / "download")
    if reason:
        pytest.skip(f"no package index reachable to install the wheel's dependencies: {reason}")
    venv = install_dir / "venv"
    # A venv of the base interpreter, without system site-packages: only what pip puts in.
    # Without its own pip, saving ensurepip's seconds: this pip installs into it (--python).
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=60)
    assert r.returncode == 0, r.stderr
    python, smx = venv / "bin" / "python", venv / "bin" / "smx"
    r = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
        + ["--no-warn-script-location", str(_wheel(dist))],
        timeout=240,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    elsewhere = install_dir / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not k.startswith("SMX_")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    # Every package comes from the venv, none from the checkout; no dev tool came along.
    probe = (
        "import importlib.util, json\n"
        f"mods = {[*PACKAGES, 'extensions.smm', 'examples.battery', 'smx.v1']!r}\n"
        "print(json.dumps({m: importlib.util.find_spec(m).origin for m in mods}))\n"
        "print(json.dumps([m for m in ('pytest', 'hypothesis', 'mypy', 'grpc_tools')"
        " if importlib.util.find_spec(m)]))\n"
    )
    r = _run([str(python), "-c", probe], timeout=30, cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    origins, dev_tools = map(json.loads, r.stdout.splitlines())
    assert all(Path(o).resolve().is_relative_to(venv.resolve()) for o in origins.values()), origins
    assert dev_tools == [], dev_tools

    r = _run([str(smx), "--version"], timeout=30, cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"smx {VERSION}"

    # The whole demo site from the installed package: the core, the smm meter reading its
    # shipped register map, the example battery, lessag with its Mosquitto, and the simulators.
    r = _run([str(smx), "demo", "--seconds", "12", "--plain"], timeout=90, cwd=elsewhere, env=env)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    final = text[text.index("the site as it was then:") :]
    for name in PROCESSES:
        assert re.search(rf"process {name} \(\w+\): running", final), final
    assert re.search(r"smm/P\s+-?[\d.]+ W", text), text[-3000:]
    assert "demo stopped; nothing left running" in text
