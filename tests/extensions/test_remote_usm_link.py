"""remote_usm when the link misbehaves, through a TCP relay under the test's control between two
REAL cores: a silent link going STALE within the documented bound, refused certificates explained
once with a bounded retry rate, and the remote operator's binding outliving a restart. What the
setpoints' outcomes say meanwhile: test_remote_usm_truth.py."""

from __future__ import annotations

import asyncio
import logging
import time

from extensions.remote_usm import RemoteUsm
from extensions.sdk import Extension
from extensions.sdk.testing import SITE, TestSite, free_port, point_where, until, wait_for
from smx.client import Credentials
from smx.v1 import point_pb2 as ppb
from tests.e2e.test_supervisor import smx
from tests.extensions.test_remote_usm import (
    Sub,
    get_point,
    link_config,
    value,
)
from tests.extensions.test_remote_usm import sites as sites  # the two-core fixture
from tests.support.relay import Relay
from tests.support.smx_run import SmxRun

FORWARD_TIMEOUT = 2.0
FAST_LINK = {"period": 0.5, "link_timeout": 1.5, "forward_timeout": FORWARD_TIMEOUT}


async def via_relay(remote: TestSite, local: TestSite, port: int, **config):
    """A started remote_usm extension reaching the remote core through a new relay."""
    relay = await Relay.start(port)
    cfg = {**link_config(remote, port), **FAST_LINK, **config, "remote": f"127.0.0.1:{relay.port}"}
    usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
    await usm.start()
    return relay, usm


def usm_config(remote: TestSite, port: int, relay: Relay) -> dict:
    return {**link_config(remote, port), **FAST_LINK, "remote": f"127.0.0.1:{relay.port}"}


async def test_a_silent_link_goes_stale_within_the_documented_bound(sites):
    """Defaults (period 4 s, link_timeout 6 s): STALE within 10 s of the last packet."""
    remote, local, port = sites
    sub = Sub(remote)
    await sub.start()
    sub.ext.publish("ess/P", 700.0)
    relay = await Relay.start(port)
    cfg = {**link_config(remote, port), "remote": f"127.0.0.1:{relay.port}"}
    for key in ("period", "forward_timeout"):
        cfg.pop(key)
    usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
    await usm.start()
    try:
        await point_where(local, "usm1/ess/P", lambda p: value(p) == 700.0, timeout=20)
        await asyncio.sleep(5)  # past the first republish: a steady state
        assert (await get_point(local, "usm1/ess/P")).quality == ppb.QUALITY_GOOD
        relay.blackhole()
        cut = time.monotonic()
        await point_where(local, "usm1/link.up", lambda p: value(p) is False, timeout=15)
        down_after = time.monotonic() - cut
        await point_where(local, "usm1/ess/P", lambda p: p.quality == ppb.QUALITY_STALE, 15)
        stale_after = time.monotonic() - cut
        assert down_after <= 6.5 + 0.5, down_after
        assert stale_after <= 10.0, stale_after
        assert usm.ext.health()["state"] == "degraded"
        assert "no message from the remote" in usm.ext.health()["devices"]["remote"]["last_error"]
        relay.restore()
        await point_where(local, "usm1/ess/P", lambda p: p.quality == ppb.QUALITY_GOOD, 20)
        await point_where(local, "usm1/link.up", lambda p: value(p) is True)
        assert usm.ext.health()["state"] == "running"
    finally:
        await usm.stop()
        await sub.stop()
        await relay.close()


async def test_a_revoked_certificate_is_one_clear_error_with_bounded_retries(sites, caplog):
    remote, local, port = sites
    relay, usm = await via_relay(remote, local, port)
    try:
        await point_where(local, "usm1/link.up", lambda p: value(p) is True)
        remote.smx("pki", "revoke", "usm-link")
        caplog.set_level(logging.INFO, logger="extensions.remote_usm")
        await point_where(local, "usm1/link.up", lambda p: value(p) is False, timeout=15)
        failures = usm.mirror.health.failures
        await asyncio.sleep(10)
        errors = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR and "refuses" in r.getMessage()
        ]
        assert len(errors) == 1, errors
        assert "revoked this link's certificate" in errors[0]
        assert "smx pki issue usm-link" in errors[0]
        # Back-off: from 0.2 s doubling (with jitter), at most 7 tries in 10 s, not 5 a second.
        assert usm.mirror.health.failures - failures <= 8
        health = usm.ext.health()
        assert health["state"] == "degraded"
        assert "revoked" in health["devices"]["remote"]["last_error"]
        # The remote operator issues a new one, copied where remote_cert/key say: taken up
        # without a restart, at the next retry.
        remote.smx("pki", "issue", "usm-link", "--domain", "trusted")
        await point_where(local, "usm1/link.up", lambda p: value(p) is True, timeout=90)
        assert usm.ext.health()["state"] == "running"
    finally:
        await usm.stop()
        await relay.close()


async def test_a_foreign_server_ca_is_explained(sites, caplog):
    remote, local, port = sites
    other = TestSite({"usm-link": ("trusted", [], [])})
    other.provision()
    cfg = {
        **link_config(remote, port),
        **FAST_LINK,
        "remote_ca": str(other.credentials("usm-link").ca),
    }
    usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
    caplog.set_level(logging.INFO, logger="extensions.remote_usm")
    await usm.start()
    try:
        await until(lambda: usm.mirror.health.failures >= 2 or None, timeout=20)
        why = usm.ext.health()["devices"]["remote"]["last_error"]
        assert why.startswith("the remote's server certificate is not signed by remote_ca")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert usm.ext.health()["state"] == "degraded"
        assert f"spiffe://{SITE}" not in why  # a plain sentence, not a gRPC dump
    finally:
        await usm.stop()
        other.close()


REMOTE_SITE = """\
site = "usm-remote"

[core]
tcp = "127.0.0.1:{port}"

[supervisor]
stop_timeout = "3s"
"""


async def test_the_remote_operators_binding_outlives_a_remote_restart(tmp_path):
    """The remote site runs under `smx run`, which rewrites its generated policy at every start:
    the binding its operator made for this link stays, and the mirror resumes by itself."""
    port = free_port()
    remote = SmxRun(REMOTE_SITE.format(port=port), prefix="smx-remote-")
    local = TestSite({"usm1": ("trusted", ["trusted-extension"], [])})
    usm = None
    try:
        home = str(remote.home)
        wait_for(lambda: remote.procs().get("core", {}).get("health") == "serving", 30)
        for args in (
            ("pki", "issue", "usm-link", "--domain", "trusted"),
            ("policy", "bind", "usm-link", "gui"),  # what the remote operator does, once
        ):
            done = smx("--home", home, *args)
            assert done.returncode == 0, done.stderr
        local.start()
        creds = Credentials.from_site(remote.home, "usm-link")
        cfg = {
            "remote": f"127.0.0.1:{port}",
            "remote_ca": str(creds.ca),
            "remote_cert": str(creds.cert),
            "remote_key": str(creds.key),
            "patterns": ["core/**"],
            **FAST_LINK,
        }
        usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
        await usm.start()
        await point_where(local, "usm1/core/uptime", lambda p: p.quality == ppb.QUALITY_GOOD, 30)

        assert remote.stop() == 0, remote.log()
        await point_where(local, "usm1/link.up", lambda p: value(p) is False, timeout=15)
        remote.start()
        await point_where(local, "usm1/link.up", lambda p: value(p) is True, timeout=60)
        await point_where(local, "usm1/core/uptime", lambda p: p.quality == ppb.QUALITY_GOOD, 30)
        assert usm.mirror.snapshots >= 2  # a new snapshot from the restarted core
        assert usm.ext.health()["state"] == "running"
    finally:
        if usm is not None:
            await usm.stop()
        local.close()
        remote.close()


async def test_a_link_the_remote_has_not_bound_backs_off_and_says_what_to_do(sites, caplog):
    """PERMISSION_DENIED (a certificate of the remote CA with no binding there): one ERROR
    line naming the fix, degraded, and retries that slow down instead of 5 a second."""
    remote, local, port = sites
    remote.smx("pki", "issue", "usm-other", "--domain", "trusted")
    creds = Credentials.from_site(remote.home, "usm-other")
    cfg = {
        **link_config(remote, port),
        **FAST_LINK,
        "remote_cert": str(creds.cert),
        "remote_key": str(creds.key),
    }
    usm = RemoteUsm(Extension(local.env("usm1", config=cfg)))
    caplog.set_level(logging.INFO, logger="extensions.remote_usm")
    await usm.start()
    try:
        await until(lambda: usm.mirror.health.failures >= 1 or None, timeout=20)
        first = usm.mirror.health.failures
        await asyncio.sleep(10)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "policy does not let spiffe://test-site/trusted/usm-other" in errors[0]
        assert "smx policy bind usm-other gui --domain trusted" in errors[0]
        assert usm.mirror.health.failures - first <= 8
        assert usm.ext.health()["state"] == "degraded"
        link_up = await get_point(local, "usm1/link.up")
        assert link_up is None or value(link_up) is False  # never up without data
    finally:
        await usm.stop()
