"""Helpers of the fronius tests: a Solar API server replaying a fixture folder over real HTTP,
and a collector of what a device publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extensions.fronius.sim_http import HttpServer
from extensions.sdk import Reading

from .recordings import FIXTURES

__all__ = ["FIXTURES", "fixture_server", "plain"]

# The symo recording has no GetAPIVersion; its Datamanager (SW 3.18) answers as the GEN24 does.
_API_VERSION = (FIXTURES / "gen24_plus_byd" / "GetAPIVersion.json").read_bytes()


def fixture_server(folder: Path, night: bool = False) -> HttpServer:
    """Answers each request with the folder's recording of it (`_night` first when `night`);
    404 for what was not recorded (GetActiveDeviceInfo, 3PInverterData)."""

    def respond(path: str, query: dict[str, str]) -> tuple[int, bytes]:
        cgi = path.rsplit("/", 1)[-1].split(".")[0]
        if cgi == "GetAPIVersion":
            return 200, _API_VERSION
        if query.get("DataCollection") == "3PInverterData":
            return 404, b""
        names = [f"{cgi}", f"{cgi}_Device_{query.get('DeviceId', 0)}"]
        suffixes = ["_night", ""] if night else [""]
        for suffix in suffixes:
            for name in names:
                path_ = folder / f"{name}{suffix}.json"
                if path_.exists():
                    return 200, path_.read_bytes()
        return 404, b"not recorded"

    return HttpServer(respond)


def plain(readings: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """{point: (value, quality)} of what a poll returned."""
    out = {}
    for name, r in readings.items():
        out[name] = (r.value, r.quality) if isinstance(r, Reading) else (r, "GOOD")
    return out
