"""Rules that keep the API and the layout honest: buf lint and breaking-change checks, generated
stubs in sync with proto/, the import rule between trust domains, and one error table."""

from __future__ import annotations

import ast
import functools
import re
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


@functools.cache  # each file is read by several rules and parametrized cases
def _imports(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return frozenset(found)


@pytest.mark.parametrize("package", ["untrusted", "extensions", "smx", "examples"])
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


# --------------------------------------------------------------------------- one home per contract

# Contract spellings that may appear in product code only in their home module
# (docs/ARCHITECTURE.md): a second copy drifts (the SDK once wrote a health state that the
# supervisor could not read).
CONTRACT_HOMES = {
    # the process environment
    r"\bSMX_(SITE|NAME|DOMAIN|TARGET|CA|CERT|KEY|DEVICES|CONFIG|HEALTH_FILE)\b": (
        "smx/process_env.py"
    ),
    # the device-id grammar
    re.escape("[a-z][a-z0-9_-]{0,31}"): "smx/names.py",
    # the channel options every client needs to reach the core
    r"grpc\.ssl_target_name_override|grpc\.default_authority": "smx/client.py",
    # the core's name (its server certificate's, its identity's): `SERVER_NAME` as a string, a
    # URI's last part or a file stem; log lines such as "smxcore ready: ..." name the program
    r"(?m)(^|/)smxcore($|[./])": "smx/identity.py",
    # the identity URI scheme (`SCHEME`, `site_uri`, `Identity.uri`): a string that starts with it
    r"(?m)^spiffe://": "smx/identity.py",
    # the core's default socket in a site home (`RunPaths.socket`)
    r"(?m)(^|/)core\.sock$": "smx/process_env.py",
    # seconds or milliseconds <-> Timestamp/Duration, by its methods or by scaling its fields
    r"\.(From|To)(Milliseconds|Nanoseconds|Seconds|Datetime)\(|\.(seconds|nanos) [*/%]": (
        "smx/timestamps.py"
    ),
}
PRODUCT = ("smx", "trusted", "extensions", "untrusted", "examples")


_SCALING = {ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}


@functools.cache
def _code_strings_and_calls(path: Path) -> str:
    """The code of `path` without its docstrings and comments: what a copy would live in. Its
    strings, `.name(` for each attribute it uses and `.name *` (`/`, `//`, `%`) for each one it
    scales (`ts.seconds * 1000`)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                docstrings.add(id(body[0].value))
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                parts.append(node.value)
        elif isinstance(node, ast.Attribute):
            parts.append(f".{node.attr}(")
        elif isinstance(node, ast.BinOp) and type(node.op) in _SCALING:
            for side in (node.left, node.right):
                if isinstance(side, ast.Attribute):
                    parts.append(f".{side.attr} {_SCALING[type(node.op)]}")
    return "\n".join(parts)


@pytest.mark.parametrize("pattern", list(CONTRACT_HOMES), ids=list(CONTRACT_HOMES.values()))
def test_each_contract_is_spelled_in_its_home_only(pattern):
    home = CONTRACT_HOMES[pattern]
    assert re.search(pattern, _code_strings_and_calls(ROOT / home)), f"{home} lost its contract"
    copies = [
        str(p.relative_to(ROOT))
        for package in PRODUCT
        for p in (ROOT / package).rglob("*.py")
        if "v1" not in p.relative_to(ROOT).parts
        and str(p.relative_to(ROOT)) != home
        and re.search(pattern, _code_strings_and_calls(p))
    ]
    assert copies == [], f"{copies} spell a contract whose one home is {home}: import it from there"


@pytest.mark.parametrize(
    "copy",
    [
        "ms = ts.seconds * 1000 + ts.nanos // 1_000_000",
        "s = 1e-9 * d.nanos + d.seconds",
        'uri = f"spiffe://{site}/trusted/smxcore"',
        'san = f"spiffe://{site}"',
        'key = pki / "server" / "smxcore.key"',
        'NAME = "smxcore"',
    ],
)
def test_the_contract_rule_sees_a_copy(tmp_path, copy):
    """The rule above only means something if it finds the copies it is written against."""
    (tmp_path / "copy.py").write_text(copy + "\n")
    code = _code_strings_and_calls(tmp_path / "copy.py")
    assert any(re.search(pattern, code) for pattern in CONTRACT_HOMES)


def test_the_contract_rule_lets_log_lines_name_the_core(tmp_path):
    (tmp_path / "log.py").write_text(
        'print(f"smxcore ready: site {site}")\nprint("smxcore stopped")\n'
    )
    code = _code_strings_and_calls(tmp_path / "log.py")
    assert not any(re.search(pattern, code) for pattern in CONTRACT_HOMES)


def test_the_shared_contracts_depend_on_no_process():
    """smx/ is the bottom layer every process imports: it may not import a process's code."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "smx").rglob("*.py")
        if _imports(p) & {"trusted", "extensions", "untrusted", "examples"}
    ]
    assert offenders == [], f"{offenders} import process code: smx/ must stand alone"


def test_quality_and_setpoint_status_names_come_from_their_home():
    """Names are spelled from the API's enums once, in smx/quality.py and smx/setpoint_status.py;
    stripping enum prefixes elsewhere is a second copy of that table."""
    prefix = re.compile(r"^(QUALITY_|SETPOINT_STATUS_)$", re.M)
    copies = [
        str(p.relative_to(ROOT))
        for package in PRODUCT
        for p in (ROOT / package).rglob("*.py")
        if "v1" not in p.relative_to(ROOT).parts and prefix.search(_code_strings_and_calls(p))
    ]
    assert copies == [], f"{copies}: use smx.quality / smx.setpoint_status"


def test_no_asyncio_wait_for_in_product_code():
    """On Python 3.11, `asyncio.wait_for` loses a cancellation that arrives in the same turn as
    its awaitable's result: a loop around it then never stops (an extension's stop hung forever
    on a device polled every 50 ms). Events are waited for with smx.aio.wait_event, anything
    else with `async with asyncio.timeout(...)`."""
    users = [
        str(p.relative_to(ROOT))
        for package in PRODUCT
        for p in (ROOT / package).rglob("*.py")
        if ".wait_for(" in _code_strings_and_calls(p) and "asyncio" in _imports(p)
    ]
    assert users == [], f"{users} use asyncio.wait_for: use `async with asyncio.timeout(...)`"
