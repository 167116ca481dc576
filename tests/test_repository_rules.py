"""Rules that keep the API and the layout honest: buf lint and breaking-change checks, generated
stubs in sync with proto/, the import rule between trust domains, and one error table."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
V1_BASELINE = ROOT / "tests/contract/api_v1_baseline.txtpb"


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_standard_passes():
    r = run(BUF, "lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_buf_breaking_against_the_v1_baseline():
    # The v1 API as first published (docs/API.md), frozen as a buf image. Comparing with it,
    # not with the main branch, keeps the check meaningful on main itself: any change since
    # v1 must be additive. Only a new major version (smx.v2) would come with a new baseline.
    r = run(BUF, "breaking", "--against", str(V1_BASELINE))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_baseline_is_the_whole_v1_api():
    # A file missing from the baseline would escape the check until someone noticed.
    r = run(BUF, "ls-files", str(V1_BASELINE))
    assert r.returncode == 0, r.stderr
    frozen = {line for line in r.stdout.split() if line.startswith("smx/")}
    current = {str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto")}
    assert frozen == current


def test_buf_breaking_catches_a_removed_field(tmp_path):
    # The check above only means something if buf really flags a break against the baseline.
    after = tmp_path / "after"
    shutil.copytree(ROOT / "proto", after / "proto")
    shutil.copy(ROOT / "buf.yaml", after / "buf.yaml")
    point = after / "proto/smx/v1/point.proto"
    point.write_text(point.read_text().replace("  string writer = 7;\n", ""))
    r = run(BUF, "breaking", str(after), "--against", str(V1_BASELINE))
    assert r.returncode != 0
    assert "writer" in r.stdout + r.stderr


def test_generated_stubs_match_the_protos():
    r = run(sys.executable, "scripts/gen_stubs.py", "--check")
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", ["untrusted", "extensions", "smx"])
def test_untrusted_and_extensions_never_import_the_core(package):
    assert "trusted" in _imports(ROOT / "tests/conftest.py")  # the checker does see imports
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if "trusted" in _imports(p)
    ]
    assert offenders == [], f"{offenders} import trusted: talk to the core through smx.v1 only"


def test_every_error_reason_has_one_status_code():
    from smx.v1 import errors_pb2
    from trusted.core.errors import CODES

    reasons = {n.removeprefix("ERROR_REASON_") for n in errors_pb2.ErrorReason.keys()} - {
        "UNSPECIFIED"
    }
    assert reasons == set(CODES)
