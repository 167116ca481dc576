"""The SDKs' public face: `smx.sdk` and `extensions.sdk` export what a user needs (`__all__`),
and the extensions, the agents and the examples use nothing else of them. Read from the source
with `ast`, so a violation fails here before it is a habit.

Allowed: `smx.sdk`, `extensions.sdk`, `extensions.sdk.protocols(.*)`, and `extensions.sdk.testing`
in tests; each name in that package's `__all__` and not underscored. A name the SDK re-exports
(`Credentials`, `DeviceHealth`, `ProcessEnv`...) is taken from the SDK, not from where it lives.
And the tests wait with one kit, extensions.sdk.testing (`until`, `wait_for`, `point_where`,
`free_port`).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

import extensions.sdk
import smx.sdk

ROOT = Path(__file__).resolve().parents[2]
USERS = [
    "extensions/smm",
    "extensions/remote_usm",
    "extensions/fronius",
    "extensions/ocpp_proxy",
    "untrusted",
    "examples",
]
SDKS = ("smx.sdk", "extensions.sdk")
FACES = (smx.sdk, extensions.sdk)


def _is_sdk(module: str) -> bool:
    return any(module == s or module.startswith(f"{s}.") for s in SDKS)


def _public(module: str, in_a_test: bool) -> bool:
    if module in SDKS or module == "extensions.sdk.protocols":
        return True
    if module.startswith("extensions.sdk.protocols."):
        return True
    return module == "extensions.sdk.testing" and in_a_test


def _reexported(module: str, name: str) -> str | None:
    """The SDK package that re-exports `module.name` (the same object), if one does."""
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    for face in FACES:
        if name in face.__all__ and getattr(face, name) is obj:
            return face.__name__
    return None


def violations(path: Path, root: Path = ROOT) -> list[str]:
    """What `path` imports of the SDKs beyond their public face, one line each."""
    tree = ast.parse(path.read_text(), str(path))
    in_a_test = path.name.startswith("test_") or path.name == "conftest.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        where = f"{path.relative_to(root)}:{node.lineno}"
        for module, name in imports:
            if not _is_sdk(module):
                face = _reexported(module, name) if name else None
                if face is not None:
                    found.append(f"{where}: {module}.{name} (take it from {face})")
                continue
            if not _public(module, in_a_test):
                found.append(f"{where}: {module} (not a public package of the SDK)")
            elif name is not None:
                exported = getattr(importlib.import_module(module), "__all__", ())
                if name.startswith("_") or name not in exported:
                    found.append(f"{where}: {module}.{name} (not in its __all__)")
    return found


def _modules() -> list[Path]:
    return sorted(p for d in USERS for p in (ROOT / d).rglob("*.py"))


def test_the_extensions_agents_and_examples_use_only_the_public_face():
    assert all(any((ROOT / d).rglob("*.py")) for d in USERS)  # each directory is there
    found = [v for path in _modules() for v in violations(path)]
    assert found == [], "import these from smx.sdk / extensions.sdk:\n" + "\n".join(found)


def test_the_checker_sees_each_kind_of_violation(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import smx.sdk.client\n"
        "from smx.sdk.points import PointSpec\n"
        "from smx.sdk import _private\n"
        "from smx.sdk import Runtime, Wakeup\n"
        "from extensions.sdk.devices import poll_forever\n"
        "from extensions.sdk.testing import until\n"
        "from extensions.sdk.protocols.modbus_link import LinkPool, _internal\n"
        "from smx.health import DeviceHealth\n"
        "from smx.client import Credentials, describe_error\n"
    )
    found = [line.split(": ", 1)[1] for line in violations(bad, tmp_path)]
    assert found == [
        "smx.sdk.client (not a public package of the SDK)",
        "smx.sdk.points (not a public package of the SDK)",
        "smx.sdk._private (not in its __all__)",
        "smx.sdk.Wakeup (not in its __all__)",
        "extensions.sdk.devices (not a public package of the SDK)",
        "extensions.sdk.testing (not a public package of the SDK)",
        "extensions.sdk.protocols.modbus_link._internal (not in its __all__)",
        "smx.health.DeviceHealth (take it from smx.sdk)",
        "smx.client.Credentials (take it from smx.sdk)",
    ]
    test = tmp_path / "test_ok.py"
    test.write_text("from extensions.sdk.testing import TestSite, until\n")
    assert violations(test, tmp_path) == []


@pytest.mark.parametrize("face", FACES, ids=lambda m: m.__name__)
def test_all_names_what_the_package_has(face: ModuleType):
    assert [n for n in face.__all__ if not hasattr(face, n)] == []


def test_the_extension_sdk_offers_all_of_the_client_sdk():
    assert set(smx.sdk.__all__) - set(extensions.sdk.__all__) == set()
    for name in smx.sdk.__all__:
        assert getattr(extensions.sdk, name) is getattr(smx.sdk, name)


def test_what_a_user_needs_is_public():
    from smx.client import Credentials
    from smx.health import DeviceHealth, HealthReport

    # a tool builds its Client from credentials; a process overrides its health
    assert smx.sdk.Credentials is Credentials
    assert (smx.sdk.DeviceHealth, smx.sdk.HealthReport) == (DeviceHealth, HealthReport)
    # a failed call to the core is caught by the SDK's name
    assert issubclass(smx.sdk.CallFailed, Exception)
    assert {"Subscription", "TaskSet"} <= set(smx.sdk.__all__)


def _imports_grpc(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "grpc" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "grpc":
            return True
    return False


def test_the_agents_catch_the_sdks_error_not_grpcs():
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "untrusted").rglob("*.py") if _imports_grpc(p)
    ]
    assert offenders == [], "an agent catches smx.sdk.CallFailed, without grpc"


KIT = {"until", "wait_for", "point_where", "free_port"}


def test_the_tests_wait_with_the_one_kit():
    """extensions.sdk.testing is the one place of the waiting helpers: no test defines its own
    (at module level) or takes them from anywhere else."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in KIT:
                found.append(f"{where}:{node.lineno}: defines {node.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "extensions.sdk.testing":
                for alias in node.names:
                    if alias.name in KIT:
                        found.append(f"{where}:{node.lineno}: {alias.name} from {node.module}")
    assert found == [], "use extensions.sdk.testing:\n" + "\n".join(found)
