"""A real, size-limited tmpfs for the tests that need what a small or volatile filesystem does
(a full disk, memory that a reboot empties). Mounting needs root, as CI has; elsewhere the
test skips."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

__all__ = ["mount_tmpfs", "unmount"]


def mount_tmpfs(mount: Path, size: str, mode: str = "0755") -> None:
    """Mount a tmpfs of `size` (e.g. "4m") on the existing directory `mount`."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def unmount(mount: Path, *, lazy: bool = True) -> None:
    subprocess.run(["umount", *(["-l"] if lazy else []), str(mount)], check=not lazy)
