"""The outage store: charger CALLs the proxy answered itself while the SCADA was away, kept on
disk in arrival order until the SCADA has answered each one (docs/OCPP.md, "Upstream outage").

One file per charge point, one JSON string (the frame exactly as received) per line. A frame is
appended and fsynced before the charger gets the proxy's answer, and removed only once the
SCADA answered it: a crash in between delivers it again (at least once), never loses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from smx.files import write_atomic

__all__ = ["OutageStore"]


class OutageStore:
    def __init__(self, directory: Path, cp_id: str) -> None:
        self.path = directory / f"{quote(cp_id, safe='')}.jsonl"
        self.frames: list[str] = []
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self.frames = [json.loads(line) for line in lines if line.strip()]

    def __len__(self) -> int:
        return len(self.frames)

    def append(self, raw: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (json.dumps(raw) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.frames.append(raw)

    def first(self) -> str:
        return self.frames[0]

    def pop(self) -> None:
        """The first frame was answered by the SCADA: forget it."""
        self.frames.pop(0)
        text = "".join(json.dumps(f) + "\n" for f in self.frames)
        write_atomic(self.path, text.encode(), 0o600)
