"""`python -m extensions.ocpp_proxy.simulator` for real: a CSMS and a charger in one process,
the charger charging through a proxy to the CSMS."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from extensions.sdk.testing import free_port, until

from .support import config, proxy

pytestmark = pytest.mark.timeout(30)


async def test_the_simulator_process_charges_through_the_proxy(tmp_path):
    seen: dict[str, object] = {}
    csms_port = free_port()
    async with proxy(
        config(f"ws://127.0.0.1:{csms_port}/ocpp"), tmp_path,
        emit=lambda cp, n, r: seen.update({k: v.value for k, v in r.items()}),
    ) as p:  # fmt: skip
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extensions.ocpp_proxy.simulator",
                "--csms-port",
                str(csms_port),
                "--charger",
                f"ws://127.0.0.1:{p.port}/CP1",
                "--interval",
                "0.2",
                "--max-current",
                "8",
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready: CSMS")
            await until(lambda: seen.get("P") == 8 * 230 * 3, timeout=15)
            assert seen["tx_active"] is True and seen["status"] == "Charging"
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)  # the proxy must run to close its link


def test_the_help_says_what_each_option_does(capsys):
    from extensions.ocpp_proxy.simulator import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a charging point with an EV (--charger). Give one or both." in text  # not cut off
    for option in ("--host", "--csms-port", "--charger", "--version", "--interval", "--session",
                   "--pause", "--max-current", "--speed", "--password"):  # fmt: skip
        words = text.split(f"{option} ")[-1].split()  # its metavar, then its help
        assert len(words) > 1 and not words[1].startswith("--"), f"{option} has no help"
