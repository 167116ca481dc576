"""Structured logs: one logfmt line per event (`ts= level= ext= logger= msg= key=value`), so a
site's logs can be grepped and parsed without guessing."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["configure_logging"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class LogfmtFormatter(logging.Formatter):
    def __init__(self, ext: str) -> None:
        super().__init__()
        self.ext = ext

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "ext": self.ext,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Anything passed as logging's `extra=` becomes a field too.
        fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def configure_logging(ext: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(ext))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
