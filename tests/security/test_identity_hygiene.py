"""Identity hygiene: the core's own certificate is never a client, the reserved names are
issued only by provisioning, and a flood of refused calls leaves a bounded trace in the log."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from smx.client import Credentials, Stubs, error_reason
from smx.v1 import admin_service_pb2 as apb
from smx.v1 import identity_service_pb2 as ipb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb
from tests.contract.audit_log import audit_records
from tests.support.certs import load_ca, make_cert, utcnow, write_pair
from trusted.pki import RESERVED_NAMES, PkiError, SiteCA

ROOT = Path(__file__).resolve().parents[2]
CORE_URI = "spiffe://test-site/trusted/smxcore"


async def whoami(stubs: Stubs):
    return await stubs.identity.WhoAmI(ipb.WhoAmIRequest(), timeout=5)


def server_stubs(site) -> Stubs:
    pki = site.home / "pki"
    creds = Credentials(pki / "ca.crt", pki / "server/smxcore.crt", pki / "server/smxcore.key")
    return Stubs(creds.aio_channel(site.target))


async def test_the_core_certificate_cannot_act_as_a_client(site, core):
    # Even a `trusted/*` binding with every right does not empower the core's own key.
    site.write_policy(extra_bindings=[("trusted/*", ["admin"])])
    await site.stubs("admin").admin.ReloadPolicy(apb.ReloadPolicyRequest(), timeout=5)
    stubs = server_stubs(site)
    for call in (
        whoami(stubs),
        stubs.points.GetPoints(spb.GetPointsRequest(names=["core/uptime"]), timeout=5),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(info.value) == "IDENTITY_INVALID"
        assert "core's own identity" in (info.value.details() or "")
    denied = await audit_records(site.stubs("admin"), kind="denied")
    assert {r.method.rsplit("/", 1)[-1] for r in denied if r.reason == "IDENTITY_INVALID"} >= {
        "WhoAmI",
        "GetPoints",
    }
    assert (await whoami(site.stubs("meter"))).identity.endswith("/meter")  # others unaffected


@pytest.mark.parametrize("name", ["smxcore", "core"])
async def test_a_client_certificate_with_a_core_name_is_refused(site, core, name):
    ca_cert, ca_key = load_ca(site.home / "pki")
    now = utcnow()
    pem, key = make_cert(
        ca_cert,
        ca_key,
        uris=[f"spiffe://test-site/trusted/{name}"],
        not_before=now - dt.timedelta(minutes=5),
        not_after=now + dt.timedelta(days=1),
    )
    cert_path, key_path = write_pair(site.home / "odd", name, pem, key)
    stubs = Stubs(
        Credentials(site.home / "pki/ca.crt", cert_path, key_path).aio_channel(site.target)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await whoami(stubs)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(info.value) == "IDENTITY_INVALID"


async def test_a_flood_of_refused_calls_yields_a_few_log_lines(site, core, caplog):
    caplog.set_level(logging.WARNING, logger="trusted.core.auth")
    nobody = site.stubs("nobody")
    write = spb.WritePointsRequest(samples=[ppb.PointSample(name="meter/P")])
    for i in range(600):
        call = (
            nobody.points.GetPoints(spb.GetPointsRequest(names=["meter/P"]), timeout=5)
            if i % 2
            else nobody.points.WritePoints(write, timeout=5)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for _ in range(200):
        with pytest.raises(grpc.aio.AioRpcError):
            await whoami(server_stubs(site))
    lines = [r.getMessage() for r in caplog.records if r.name == "trusted.core.auth"]
    mine = [line for line in lines if "trusted/nobody" in line]
    assert len(mine) == 1 and mine[0].startswith("denied identity=spiffe://test-site/trusted/")
    assert len([line for line in lines if "identity=- " in line]) == 1
    assert len(lines) <= 4


def smx(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trusted.cli.main", "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_reserved_names_cannot_be_issued_by_hand(tmp_path):
    assert smx(tmp_path, "pki", "init", "--site", "usm-0017").returncode == 0
    for name in RESERVED_NAMES:
        for domain in ("trusted", "untrusted"):
            out = smx(tmp_path, "pki", "issue", name, "--domain", domain)
            assert out.returncode == 2, out
            assert out.stdout == ""
            lines = out.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"smx pki: client name {name!r} is")
            assert "reserved" in lines[0]
    assert not list((tmp_path / "pki/clients").iterdir())
    out = smx(tmp_path, "pki", "issue", "meter", "--domain", "trusted")
    assert out.returncode == 0, out.stderr
    assert smx(tmp_path, "pki", "issue", "admin", "--domain", "trusted").returncode == 0


def test_provisioning_still_issues_the_supervisor_but_never_a_core_name(tmp_path):
    ca = SiteCA.init(tmp_path / "pki", "usm-0017")
    assert ca.issue("supervisor", "trusted").identity.endswith("/trusted/supervisor")
    for name in ("smxcore", "core"):
        with pytest.raises(PkiError, match="reserved for the core"):
            ca.issue(name, "trusted")
    with pytest.raises(PkiError, match="only `smx run` provisioning"):
        ca.issue("supervisor", "trusted", replace=True, by_hand=True)
