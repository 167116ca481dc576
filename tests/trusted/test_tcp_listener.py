"""The core's optional TCP listener: one WARNING line at start when it is not on a loopback
address (the API is then reachable from the network, mTLS still required); silent on loopback.

Tests bind loopback only: the decision is tested on the parsed config, and the warning of a
real core start with the decision forced, so no public address is ever bound."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from extensions.sdk.testing import free_port
from smx.client import Credentials, Stubs
from smx.v1 import identity_service_pb2 as ipb
from tests.support.site import Site
from trusted.core import server
from trusted.core.config import load_core_config, tcp_is_loopback
from trusted.core.server import Core


@pytest.mark.parametrize(
    "tcp, loopback",
    [
        ("127.0.0.1:7443", True),
        ("127.3.2.1:7443", True),  # all of 127.0.0.0/8
        ("[::1]:7443", True),
        ("[::ffff:127.0.0.1]:7443", True),
        ("localhost:7443", True),
        ("LocalHost.:7443", True),
        ("0.0.0.0:7443", False),  # every interface
        ("[::]:7443", False),
        ("192.168.1.10:7443", False),
        ("10.0.0.1:7443", False),
        ("[fe80::1]:7443", False),
        ("[2001:db8::1]:7443", False),
        ("usm-0017.example.org:7443", False),  # a name is never resolved: taken as reachable
        ("localhost.example.org:7443", False),
        ("128.0.0.1:7443", False),
    ],
)
def test_the_loopback_decision_on_the_parsed_config(
    tmp_path: Path, tcp: str, loopback: bool
) -> None:
    path = tmp_path / "core.toml"
    path.write_text(f'tcp = "{tcp}"\n')
    cfg = load_core_config(path, home=tmp_path / "site")
    assert cfg.tcp == tcp
    assert tcp_is_loopback(cfg.tcp) is loopback


def tcp_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "reachable from the network" in r.getMessage()
    ]


async def start_and_call(site: Site, tcp: str) -> None:
    """Start a real core with `tcp`, make one mTLS call over TCP, stop it."""
    core = Core(dataclasses.replace(site.config(), tcp=tcp))
    await core.start()
    try:
        async with Credentials.from_site(site.home, "admin").aio_channel(tcp) as channel:
            me = await Stubs(channel).identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)
        assert me.roles == ["admin"]
    finally:
        await core.stop(grace=0.1)


async def test_a_loopback_listener_starts_silently(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    tcp = f"127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO):
        await start_and_call(site, tcp)
    assert tcp_lines(caplog) == []
    assert any(tcp in r.getMessage() for r in caplog.records)  # the listener did serve


async def test_a_listener_off_loopback_is_warned_about_once_naming_the_address(
    site: Site, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The address bound stays loopback; only the decision says "not loopback", as it does
    # for the addresses above.
    monkeypatch.setattr(server, "tcp_is_loopback", lambda tcp: False)
    tcp = f"127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO):
        await start_and_call(site, tcp)
    [line] = tcp_lines(caplog)
    assert tcp in line and "mTLS" in line
    [record] = [r for r in caplog.records if r.getMessage() == line]
    assert record.levelno == logging.WARNING and record.name == "trusted.core.server"
