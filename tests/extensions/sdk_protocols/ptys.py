"""Two linked pseudo-terminals (socat): a device on one end, the code under test on the other.
Tests that need them skip where socat is not installed."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["socat_pair"]


@contextmanager
def socat_pair(directory: Path) -> Iterator[tuple[str, str]]:
    """(device end, reader end) as paths in `directory`; socat stops on exit."""
    if shutil.which("socat") is None:
        pytest.skip("socat not installed")
    a, b = directory / "device", directory / "reader"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert time.monotonic() < deadline, "socat gave no pty pair"
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)
