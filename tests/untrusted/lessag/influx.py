"""A real InfluxDB 1.x (the Debian `influxdb` package's `influxd`) for the line-protocol test:
a process on free loopback ports, every directory under a temporary one."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from extensions.sdk.testing import free_port

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"


def influxd_available() -> bool:
    return Path(INFLUXD).exists()


class InfluxDB:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        conf = home / "influxdb.conf"
        conf.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{home}/meta"
[data]
  dir = "{home}/data"
  wal-dir = "{home}/wal"
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[monitor]
  store-enabled = false
"""
        )
        self.log = open(home / "influxd.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [INFLUXD, "run", "-config", str(conf)], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/ping", timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("influxd did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, q: str, db: str = "") -> dict[str, Any]:
        data = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ns"}).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as r:
            return dict(json.loads(r.read()))

    def write(self, db: str, body: bytes) -> int:
        req = urllib.request.Request(f"{self.url}/write?db={db}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
