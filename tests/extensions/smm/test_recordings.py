"""Every recording in fixtures/<maker_model>/ reads to its snapshot (`expected.toml`): first
through the parser and the mapping alone, then byte for byte through pseudo-terminals into the
real smm extension of a real site (`smx run`), mode D included, with no spurious point.

The snapshots were written by `python -m tests.extensions.smm.test_recordings` and then checked
by hand against the recordings; rewrite one only after checking the change the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from extensions.smm.iec62056_21 import parse_data_message, parse_push_telegram
from extensions.smm.iec_simulator import IecSimulator, SimMeter
from extensions.smm.obis import map_datasets
from extensions.smm.semantics import Meter
from smx.toml_text import toml_str
from tests.support.smx_run import ROOT, SmxRun

FIXTURES = Path(__file__).parent / "fixtures"
RECORDINGS = sorted(d for d in FIXTURES.iterdir() if (d / "meter.toml").is_file())
RECEIPT = "receipt"  # the telegram has no meter clock: the source time is when it was read
# Line rates of the replay: DSMR 4/5 meters push at 115200 baud, the others at 9600; mode A/B
# readouts run at 2400 instead of 300 to keep the test short (the rate is not under test).
PUSH_BAUD = {"dsmr_crc": 115200}


def meta(folder: Path) -> dict[str, Any]:
    with open(folder / "meter.toml", "rb") as f:
        return tomllib.load(f)


def expected(folder: Path) -> dict[str, dict[str, Any]]:
    with open(folder / "expected.toml", "rb") as f:
        points: dict[str, dict[str, Any]] = tomllib.load(f)["points"]
    return points


def published(folder: Path) -> dict[str, dict[str, Any]]:
    """What smm publishes for this recording, by point (without the device): the same steps
    as the extension (parse, map to the vocabulary, plausibility), without a line or a core."""
    info = meta(folder)
    meter = SimMeter(folder / "readout.txt", replay=True)
    if info["mode"] == "D":
        raw = meter.recorded_telegram
        end = raw.index(b"\n", raw.index(b"!")) + 1  # the reader stops at the "!" line
        _, datasets = parse_push_telegram(
            raw[:end], require_crc=info.get("reader", {}).get("require_crc")
        )
    else:
        datasets = parse_data_message(meter.recorded_message, require_bcc=_require_bcc(info))
    result = map_datasets(datasets, tz=zoneinfo.ZoneInfo(info.get("timezone", "UTC")))
    device = Meter(folder.name)
    out = {}
    for name, reading in device.readings(result.readings).items():
        point = name.partition("/")[2]
        out[point] = {
            "value": reading.value,
            "unit": device.spec(point).unit,
            "quality": reading.quality,
            "time": _iso(reading.source_time) if reading.source_time else RECEIPT,
        }
    return out


def _require_bcc(info: dict[str, Any]) -> bool:
    return bool(info["framing"] in ("bcc", "framed_bcc"))


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the recordings as they are ------------------------------------------------------------------


def test_every_recording_has_a_snapshot_and_eight_makers_are_real():
    missing = [d.name for d in RECORDINGS if not (d / "expected.toml").is_file()]
    assert missing == []
    real = {meta(d)["maker"] for d in RECORDINGS if meta(d)["real"]}
    assert len(real) >= 8, sorted(real)
    modes = {meta(d)["mode"] for d in RECORDINGS if meta(d)["real"]}
    assert {"C", "D"} <= modes


@pytest.mark.parametrize("folder", RECORDINGS, ids=[d.name for d in RECORDINGS])
def test_recording_maps_to_its_snapshot(folder):
    assert published(folder) == expected(folder)


# -- through the real extension ------------------------------------------------------------------


def _site_toml(sims: dict[str, IecSimulator]) -> str:
    lines = [
        'site = "usm-0062"',
        "[extensions.smm]",
        'module = "extensions.smm"',
        f"devices = [{', '.join(toml_str(n) for n in sims)}]",
    ]
    for name, sim in sims.items():
        info = meta(FIXTURES / name)
        lines += [
            "[[extensions.smm.config.iec62056]]",
            f"device = {toml_str(name)}",
            f"port = {toml_str(sim.port)}",
            f"mode = {toml_str(info['mode'])}",
            f"initial_baud = {sim.initial_baud}",
            f"timezone = {toml_str(info.get('timezone', 'UTC'))}",
            f"require_bcc = {str(_require_bcc(info)).lower()}",
            'interval = "2s"',
            'answer_timeout = "3s"',
        ]
        lines += [f"{k} = {str(v).lower()}" for k, v in info.get("reader", {}).items()]
    return "\n".join(lines) + "\n"


def _simulator(folder: Path) -> IecSimulator:
    info = meta(folder)
    meter = SimMeter(folder / "readout.txt", replay=True)
    if info["mode"] == "D":
        baud = PUSH_BAUD.get(info["framing"], 9600)
    else:
        baud = 300 if info["mode"] == "C" else 2400
    sim = IecSimulator(
        meter, mode=info["mode"], initial_baud=baud, push_interval=1.0, reaction_time=0.05
    )
    # Under `smx run` as root, smm runs as a user of its own: let it open the pty (a real
    # serial port would be given through os_groups, e.g. dialout).
    os.chmod(sim.port, 0o666)
    return sim.start()


def _smx(home: Path, *args: str) -> list[dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(home), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _value(point: dict[str, Any]) -> Any:
    value = point.get("value", {})
    return next(iter(value.values()), None)


def test_every_recording_reads_to_its_snapshot_through_the_real_extension():
    sims = {d.name: _simulator(d) for d in RECORDINGS}
    site = SmxRun(_site_toml(sims), prefix="smx-rec-")
    started = time.time()
    try:
        want = {f"{d.name}/{p}": v for d in RECORDINGS for p, v in expected(d).items()}
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert site.proc.poll() is None, site.log()
            declared = {m["name"] for m in _smx(site.home, "points", "ls", "**")}
            ours = sorted(n for n in declared if n.split("/")[0] in sims)
            if ours:
                got = {p["name"]: p for p in _smx(site.home, "points", "get", *ours)}
            if set(want) <= set(got) and all(_value(got[n]) is not None for n in want):
                break
            time.sleep(1.0)
        ended = time.time()
        assert sorted(set(got) - set(want)) == [], "points no recording should give"
        assert sorted(set(want) - set(got)) == [], site.log()[-3000:]
        for name, exp in want.items():
            point = got[name]
            assert math.isclose(_value(point), exp["value"], rel_tol=1e-12), name
            assert point["quality"] == f"QUALITY_{exp['quality']}", name
            when = dt.datetime.fromisoformat(point["source_time"].replace("Z", "+00:00"))
            if exp["time"] == RECEIPT:
                assert started - 1 <= when.timestamp() <= ended + 1, name
            else:
                assert _iso(when) == exp["time"], name
        units = {m["name"]: m.get("unit", "") for m in _smx(site.home, "points", "ls", "**")}
        assert {n: units[n] for n in want} == {n: e["unit"] for n, e in want.items()}
    finally:
        site.close()
        for sim in sims.values():
            sim.stop()


# -- writing the snapshots -----------------------------------------------------------------------


def write_snapshot(folder: Path) -> None:
    rows = [
        "# What smm publishes for this recording (tests/extensions/smm/test_recordings.py):",
        "# primary values in the vocabulary's units, their quality, and their source time in",
        f'# UTC ("{RECEIPT}" when the telegram carries no meter clock). Checked by hand',
        "# against readout.txt.",
        "[points]",
    ]
    for point, p in sorted(published(folder).items()):
        rows.append(
            f"{toml_str(point)} = {{ value = {p['value']!r}, unit = {toml_str(p['unit'])}, "
            f"quality = {toml_str(p['quality'])}, time = {toml_str(p['time'])} }}"
        )
    (folder / "expected.toml").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    for folder in RECORDINGS if len(sys.argv) < 2 else [FIXTURES / a for a in sys.argv[1:]]:
        write_snapshot(folder)
        print(folder.name, len(published(folder)), "points")


def test_the_bcc_fault_breaks_a_replayed_checksum():
    """`--fault bcc` on a replay: one digit of a value changed, so the CRC (DSMR) or BCC no
    longer matches and the reader refuses the telegram, naming both checksums."""
    from extensions.smm.iec62056_21 import BccError
    from extensions.smm.iec_client import IecClient

    am550 = SimMeter(FIXTURES / "iskra_am550" / "readout.txt", replay=True)
    with IecSimulator(am550, mode="D", initial_baud=9600, push_interval=0.3, fault="bcc") as sim:
        client = IecClient(sim.port, mode="D", initial_baud=9600, read_timeout=3)
        try:
            with pytest.raises(BccError, match="CRC mismatch: computed [0-9A-F]{4}, received 56DD"):
                client.listen()
            sim.fault = None  # telegrams already on the line stay corrupt: the next good one
            for _ in range(5):
                try:
                    assert client.listen().identification.ident == "M550T-1012"
                    break
                except BccError:
                    continue
            else:
                raise AssertionError("no good telegram after the fault was cleared")
        finally:
            client.close()
