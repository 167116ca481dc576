"""Frames of real chargers (fixtures/ocpp16, see its README) replayed through the proxy, each
from the side that sent it: they arrive unchanged and produce the expected points."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from .support import RawScada, charger, config, proxy, recv

pytestmark = pytest.mark.timeout(30)

FIXTURES = Path(__file__).parent / "fixtures" / "ocpp16"
FROM_CHARGER = {
    "BootNotification",
    "StatusNotification",
    "Authorize",
    "StartTransaction",
    "StopTransaction",
    "MeterValues",
    "Heartbeat",
    "DataTransfer",
}


def directions(lines: list[str]) -> list[str]:
    """'cp' or 'csms' for each line (README, "Direction")."""
    calls: dict[str, str] = {}
    out = []
    for line in lines:
        msg = json.loads(line)
        if msg[0] == 2:
            sender = "cp" if msg[2] in FROM_CHARGER else "csms"
            calls[msg[1]] = sender
        else:
            caller = calls.get(msg[1], "csms")
            sender = "csms" if caller == "cp" else "cp"
        out.append(sender)
    return out


EXPECTED: dict[str, dict[str, Any]] = {
    "evcc-issue-15890_ENplus_metervalues.jsonl": {
        "I_offered": 32.0,
        "I1": 0.0,
        "U1": 246.3,
        "Ap": 18.099,  # 18099.0 Wh
        "P": 0.0,
        "tx_active": True,
        "tx_id": "2",
    },
    "evcc-issue-32078_remote_start_sequence.jsonl": {"status": "Preparing", "error": "NoError"},
    "lbbrhzn-issue-1245_Wallbox_TxDefaultProfile.jsonl": {"status": "SuspendedEVSE"},
    "evcc-pr-14888_ZJBENY_boot.jsonl": {"status": "Preparing"},  # connector 0 is not a device
    "evcc-issue-8116_EVBox_RemoteStart_TxProfile.jsonl": {},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_recorded_frames_cross_unchanged(tmp_path, name):
    lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    scada = await RawScada().start()
    points: dict[str, Any] = {}
    times: dict[str, Any] = {}

    def emit(cp_id: str, n: int, readings: dict[str, Any]) -> None:
        assert (cp_id, n) == ("CP1", 1)
        for k, r in readings.items():
            points[k], times[k] = r.value, r.source_time

    try:
        async with proxy(config(scada.url), tmp_path, emit) as p, charger(p.port) as cp:
            to_scada = 0
            for line, sender in zip(lines, directions(lines), strict=True):
                if sender == "cp":
                    await cp.send(line)
                    assert await scada.frame(to_scada) == line
                    to_scada += 1
                else:
                    await scada.ws.send(line)
                    assert await recv(cp) == line
    finally:
        await scada.stop()
    assert points == {**points, **EXPECTED[name]}
    assert set(EXPECTED[name]) <= set(points)
    if name.startswith("evcc-issue-15890"):
        assert times["P"] == dt.datetime(2024, 9, 3, 17, 15, 44, tzinfo=dt.UTC)
