"""The health file as the supervisor reads it: files written by processes it does not trust."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from smx.health import MAX_FILE_BYTES, HealthReport, read_health_file, write_health_file
from trusted.supervisor.status import format_status


def test_a_written_report_reads_back(tmp_path: Path):
    path = tmp_path / "ext.health.json"
    write_health_file(path, HealthReport("failed", core_connected=False, last_error="refused"))
    report = read_health_file(path)
    assert report is not None
    assert (report.state, report.core_connected, report.last_error) == ("failed", False, "refused")


def test_a_fifo_does_not_block_the_reader(tmp_path: Path):
    path = tmp_path / "ext.health.json"
    os.mkfifo(path)  # a process that wants to hang the supervisor's event loop
    start = time.monotonic()
    assert read_health_file(path) is None
    assert time.monotonic() - start < 1.0


def test_a_link_to_another_file_is_not_followed(tmp_path: Path):
    other = tmp_path / "other.health.json"
    write_health_file(other, HealthReport("running", core_connected=True))
    path = tmp_path / "ext.health.json"
    path.symlink_to(other)
    assert read_health_file(path) is None
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert read_health_file(tmp_path / "zero") is None


def test_huge_or_deeply_nested_files_are_no_report(tmp_path: Path):
    path = tmp_path / "ext.health.json"
    body = {"state": "running", "ts": time.time(), "last_error": "x" * MAX_FILE_BYTES}
    path.write_text(json.dumps(body))
    assert read_health_file(path) is None
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert read_health_file(path) is None


def test_status_shows_control_characters_as_escapes():
    forged = "boom\x1b]0;owned\x07\nfake  extension  running"
    status = {
        "site": "s",
        "pid": 1,
        "state": "running",
        "started_at": time.time(),
        "updated_at": time.time(),
        "processes": [{"name": "evil", "kind": "agent", "state": "running", "last_error": ""}],
    }
    # Why it last died (not running) and what troubles it now (running): both escaped.
    for state, key in (("backoff", "last_error"), ("running", "health_error")):
        status["processes"] = [{"name": "evil", "kind": "agent", "state": state, key: forged}]
        text = format_status(status, running=True)
        assert "\x1b" not in text and "\x07" not in text
        assert len(text.splitlines()) == 3  # the header, the column names, one row
        assert "\\x1b]0;owned\\x07\\nfake" in text
