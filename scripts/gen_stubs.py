"""Generate the Python stubs for proto/smx/v1 into smx/v1 (their one importable home).

`--check` regenerates into a temporary directory and fails when the committed stubs differ,
so a .proto change without regenerated stubs cannot land.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.glob("smx/v1/*.proto"))
    grpc_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in (out / "smx", out / "smx" / "v1"):
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text(
                '"""Generated from proto/smx/v1 by scripts/gen_stubs.py: do not edit."""\n'
            )
    return sorted(p for p in (out / "smx" / "v1").iterdir() if p.name.endswith(GENERATED))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted(p for p in (ROOT / "smx" / "v1").iterdir() if p.name.endswith(GENERATED))
        stale = [
            p.name
            for p in fresh
            if not (ROOT / "smx" / "v1" / p.name).exists()
            or not filecmp.cmp(p, ROOT / "smx" / "v1" / p.name, shallow=False)
        ]
        extra = sorted({p.name for p in committed} - {p.name for p in fresh})
        if stale or extra:
            print(
                f"stale generated stubs: {stale + extra}; run scripts/gen_stubs.py", file=sys.stderr
            )
            return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
