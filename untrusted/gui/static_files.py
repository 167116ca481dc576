"""The page's three files, read once at start and served by exact name: no path from a request
ever reaches the file system, so no `..` or encoded trick can read anything else."""

from __future__ import annotations

from pathlib import Path

__all__ = ["StaticFile", "load_static"]

FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


class StaticFile:
    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type


def load_static() -> dict[str, StaticFile]:
    # Beside the module (package data), not through importlib.resources: that would import
    # zipfile, tempfile and email for three files, ~1 MiB on every GUI process.
    folder = Path(__file__).parent / "static"
    return {
        path: StaticFile((folder / name).read_bytes(), content_type)
        for path, (name, content_type) in FILES.items()
    }
