"""The contracts a simulator or a tiny process needs do not drag grpc in (~20 MB per process on
a 1 GB board): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_light_contracts_load_neither_grpc_nor_protobuf():
    code = (
        "import sys\n"
        "import smx.process_env, smx.health, smx.files, smx.names, smx.vocabulary, smx.settings\n"
        "import examples.battery.simulator\n"
        "heavy = [m for m in ('grpc', 'google.protobuf', 'cryptography') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
