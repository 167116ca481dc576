"""remote_usm against two REAL cores (processes, real mTLS): a sub-meter USM reached over its TCP
listener with a certificate from its own CA, mirrored here under `usm1/`, with setpoints
forwarded down and their outcome reported back; a cut link, a healed link, no duplicates.

Also the SDK pieces this extension needed: setpoint handlers for glob patterns (the core's own
globs), typed settings and TestSite's extra core.toml text."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
import types

import grpc
import pytest

from extensions.remote_usm import UNREACHABLE, RemoteConfig, RemoteUsm, SetpointForwarder
from extensions.sdk import (
    Applied,
    Clamped,
    Extension,
    PointSpec,
    ProcessEnv,
    Rejected,
    SetpointState,
    SetupError,
    Unconfirmed,
    parse_settings,
)
from extensions.sdk.setpoints import SetpointRequest, SetpointRouter
from extensions.sdk.testing import SITE, TestSite, free_port, point_where, until
from smx.client import Credentials
from smx.v1 import control_service_pb2 as cpb
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb

PERIOD = 0.5
# The exact lines the remote operator adds to the remote policy.local.toml for this link.
LINK_BINDING = f"""
[[bindings]]
identity = "spiffe://{SITE}/trusted/usm-link"
roles = ["gui"]
rules = [ {{ verbs = ["request"], points = ["**/*_set"] }} ]
description = "remote_usm link of the main USM: read everything, request setpoints"
"""


async def get_point(site, name):
    resp = await site.stubs("admin").points.GetPoints(spb.GetPointsRequest(names=[name]))
    return resp.points[0] if resp.points else None


def value(p):
    return getattr(p.value, p.value.WhichOneof("kind"))


class Sub:
    """The sub-meter's storage extension on the REMOTE USM (a real SDK extension): it publishes
    and owns `ess/P_set`, clamping to ±3000 W, and records every setpoint id it is asked for."""

    def __init__(self, site: TestSite) -> None:
        self.ext = Extension(site.env("ess"))
        self.ext.declare(
            PointSpec("ess/P", unit="W", description="battery power, P > 0 charging"),
            PointSpec("ess/SoC", unit="%"),
            PointSpec("ess/P_set", unit="W", description="requested battery power"),
        )
        self.seen: dict[str, float] = {}  # remote setpoint id -> requested value
        self.before_answer = lambda: None  # e.g. break the link while the answer is on its way

        @self.ext.on_setpoint("ess/P_set")
        async def set_power(req: SetpointRequest):
            self.seen[req.id] = req.value
            self.before_answer()
            if abs(req.value) > 3000:
                return Clamped(3000.0 if req.value > 0 else -3000.0, "inverter limit")
            return Applied()

    async def start(self) -> None:
        await self.ext.start()

    async def stop(self) -> None:
        await self.ext.stop()


@pytest.fixture
async def sites():
    port = free_port()
    remote = TestSite(
        {"ess": ("trusted", ["trusted-extension"], []), "usm-link": ("trusted", [], [])},
        core_toml=f'tcp = "127.0.0.1:{port}"',
    )
    local = TestSite(
        {
            "usm1": ("trusted", ["trusted-extension"], []),
            "ctrl": ("untrusted", ["untrusted-agent"], []),
        }
    )
    try:
        remote.provision()
        with open(remote.home / "policy.local.toml", "a") as f:
            f.write(LINK_BINDING)
        remote.start()
        local.start()
        yield remote, local, port
    finally:
        local.close()
        remote.close()


def link_config(remote: TestSite, port: int) -> dict:
    creds = remote.credentials("usm-link")  # issued by the REMOTE CA
    return {
        "remote": f"127.0.0.1:{port}",
        "remote_ca": str(creds.ca),
        "remote_cert": str(creds.cert),
        "remote_key": str(creds.key),
        "period": PERIOD,
        "forward_timeout": 4,
    }


async def request(local: TestSite, name: str, val: float, seconds: float = 60):
    req = cpb.RequestSetpointRequest(name=name, value=ppb.Value(double_value=val))
    req.valid_for.FromSeconds(int(seconds))
    resp = await local.stubs("ctrl").control.RequestSetpoint(req)
    return resp.setpoint


async def request_or_none(local: TestSite, name: str, val: float):
    try:
        return await request(local, name, val)
    except grpc.aio.AioRpcError:
        return None


async def outcome(local: TestSite, sid: str):
    async def done():
        resp = await local.stubs("ctrl").control.GetSetpoint(cpb.GetSetpointRequest(id=sid))
        sp = resp.setpoint
        return sp if sp.status != cpb.SETPOINT_STATUS_PENDING else None

    return await until(done, timeout=15)


def remote_requests(remote: TestSite) -> int:
    """Setpoint requests the REMOTE core recorded in its audit log (survives its restart)."""
    out = remote.smx("audit", "--kind", "setpoint_request", "--limit", "1000")
    return sum(1 for line in out.splitlines() if "ess/P_set" in line)


async def restart_setpoint_watch(ext: Extension) -> None:
    """What a broken setpoint stream does: watch again, and the local core re-sends every
    setpoint in force."""
    await ext.tasks.cancel(["setpoints"])
    ext.tasks.spawn(ext.setpoints.run(), "setpoints")


async def test_mirror_forward_cut_and_heal(sites):
    remote, local, port = sites
    sub = Sub(remote)
    await sub.start()
    sub.ext.publish("ess/P", 1500.0, source_time=1_700_000_000.25)
    sub.ext.publish("ess/SoC", 61.0, "UNCERTAIN")

    usm = RemoteUsm(Extension(local.env("usm1", config=link_config(remote, port))))
    await usm.start()
    try:
        # -- mirrored under the prefix, with the remote unit, quality and source time ---------
        p = await point_where(local, "usm1/ess/P", lambda p: value(p) == 1500.0)
        assert p.unit == "W" and p.quality == ppb.QUALITY_GOOD
        mirrored_from = await get_point(remote, "ess/P")
        assert p.source_time == mirrored_from.source_time  # the device's time, kept
        assert abs(p.source_time.ToMilliseconds() - 1_700_000_000_250) <= 1
        assert p.writer.endswith("/trusted/usm1")
        soc = await point_where(local, "usm1/ess/SoC", lambda p: value(p) == 61.0)
        assert soc.unit == "%" and soc.quality == ppb.QUALITY_UNCERTAIN
        await point_where(local, "usm1/link.up", lambda p: value(p) is True)
        meta = await local.stubs("admin").points.ListPoints(
            spb.ListPointsRequest(pattern="usm1/ess/*")
        )
        described = {m.name: m for m in meta.points}
        assert described["usm1/ess/P"].description == "battery power, P > 0 charging"
        assert described["usm1/ess/P"].kind == ppb.VALUE_KIND_DOUBLE

        # A change on the remote flows; an unchanged value stays fresh (republished).
        sub.ext.publish("ess/P", 1200.0)
        await point_where(local, "usm1/ess/P", lambda p: value(p) == 1200.0)
        await asyncio.sleep(PERIOD * 4)
        assert (await get_point(local, "usm1/ess/P")).quality == ppb.QUALITY_GOOD

        # -- a setpoint travels down; the local requester sees the remote owner's clamp -------
        sp = await request(local, "usm1/ess/P_set", 5000.0, seconds=60)
        done = await outcome(local, sp.id)
        assert done.status == cpb.SETPOINT_STATUS_CLAMPED
        assert done.applied_value.double_value == 3000.0
        assert list(sub.seen.values()) == [5000.0]
        remote_sp = (
            await remote.stubs("admin").control.GetSetpoint(
                cpb.GetSetpointRequest(id=next(iter(sub.seen)))
            )
        ).setpoint
        # Same validity: the remote setpoint expires with the local one.
        delta = remote_sp.expire_time.ToMilliseconds() - sp.expire_time.ToMilliseconds()
        assert abs(delta) < 1000
        assert remote_sp.requester == f"spiffe://{SITE}/trusted/usm-link"

        # A re-sent local setpoint (our setpoint watch restarted) is not requested again.
        await restart_setpoint_watch(usm.ext)
        await asyncio.sleep(1.0)
        assert len(sub.seen) == 1 and remote_requests(remote) == 1
        again = await local.stubs("ctrl").control.GetSetpoint(cpb.GetSetpointRequest(id=sp.id))
        assert again.setpoint.status == cpb.SETPOINT_STATUS_CLAMPED

        # -- the link is cut: link.up false, mirrored points STALE, setpoints refused ---------
        await sub.stop()
        remote.stop_core()
        await point_where(local, "usm1/link.up", lambda p: value(p) is False)
        await point_where(local, "usm1/ess/P", lambda p: p.quality == ppb.QUALITY_STALE)
        p = await get_point(local, "usm1/ess/P")
        assert value(p) == 1200.0  # the last value is kept
        cut = await request(local, "usm1/ess/P_set", 100.0)
        refused = await outcome(local, cut.id)
        assert refused.status == cpb.SETPOINT_STATUS_REJECTED
        assert refused.reason == UNREACHABLE

        # -- restored: values flow again, nothing duplicated ---------------------------------
        remote.start()
        sub = Sub(remote)
        await sub.start()
        sub.ext.publish("ess/P", -800.0)
        p = await point_where(local, "usm1/ess/P", lambda p: value(p) == -800.0)
        assert p.quality == ppb.QUALITY_GOOD and p.unit == "W"
        await point_where(local, "usm1/link.up", lambda p: value(p) is True)
        assert usm.mirror.snapshots >= 2  # the restarted remote could not resume: re-snapshot

        await restart_setpoint_watch(usm.ext)  # the clamped setpoint is re-sent once more
        sp2 = await request(local, "usm1/ess/P_set", -2000.0)
        done2 = await outcome(local, sp2.id)
        assert done2.status == cpb.SETPOINT_STATUS_APPLIED
        assert done2.applied_value.double_value == -2000.0
        await asyncio.sleep(0.5)
        # Two local requests reached the remote, each exactly once (the refused one never did).
        assert remote_requests(remote) == 2
        assert usm.forwarder.remote_requests == 2
        assert list(sub.seen.values()) == [-2000.0]
    finally:
        await usm.stop()
        await sub.stop()


async def test_remote_owner_rejection_and_remote_staleness(sites):
    remote, local, port = sites
    sub = Sub(remote)

    @sub.ext.on_setpoint("ess/SoC_min_set")
    async def refuse(req):
        return Rejected("below the cell manufacturer's minimum")

    sub.ext.declare(
        PointSpec("ess/SoC_min_set", unit="%"), PointSpec("ess/U", unit="V", period=0.3)
    )
    await sub.start()
    sub.ext.publish("ess/U", 230.0)
    usm = RemoteUsm(Extension(local.env("usm1", config=link_config(remote, port))))
    await usm.start()
    try:
        await point_where(local, "usm1/ess/U", lambda p: value(p) == 230.0)
        # Mirrored setpoints are declared with the rest, within a flush or two of the values.
        sp = await until(lambda: request_or_none(local, "usm1/ess/SoC_min_set", 5.0))
        done = await outcome(local, sp.id)
        assert done.status == cpb.SETPOINT_STATUS_REJECTED
        assert done.reason == "remote USM: below the cell manufacturer's minimum"
        # Not refreshed on the remote: STALE there, UNCERTAIN at once here (a writer may not send
        # STALE), then STALE here too since it is no longer republished.
        await point_where(local, "usm1/ess/U", lambda p: p.quality == ppb.QUALITY_UNCERTAIN)
        await point_where(local, "usm1/ess/U", lambda p: p.quality == ppb.QUALITY_STALE)
    finally:
        await usm.stop()
        await sub.stop()


# -- the SDK pieces ----------------------------------------------------------------------------


async def test_router_exact_name_wins_over_pattern_and_globs_are_the_cores():
    calls = []

    def handler(tag):
        async def h(req):
            calls.append((tag, req.name))
            return Applied()

        return h

    router = SetpointRouter(client=None)  # type: ignore[arg-type]
    router.add("usm1/**/*_set", handler("glob"), None)
    router.add("usm1/ess/P_set", handler("exact"), None)
    assert router.handlers.keys() == {"usm1/ess/P_set"}  # patterns are never declared as points
    for name in ("usm1/ess/P_set", "usm1/ev1/I_max_set", "usm1/site2/ess/P_set"):
        route = router.route_for(name)
        await route.handler(SetpointRequest("i", name, 1.0, "r", time.time() + 9))
    assert calls == [
        ("exact", "usm1/ess/P_set"),
        ("glob", "usm1/ev1/I_max_set"),
        ("glob", "usm1/site2/ess/P_set"),
    ]
    assert router.route_for("usm1/ess/P") is None
    assert router.route_for("usm1/P_set") is None  # ** is one or more segments
    with pytest.raises(ValueError, match="'\\*\\*' must be a whole segment"):
        router.add("usm1/a**/*_set", handler("bad"), None)


def test_testsite_core_toml_is_appended_top_level():
    site = TestSite({}, core_toml='tcp = "127.0.0.1:1"\n[watch]\nstale_factor = 3.0')
    try:
        site.provision()
        cfg = tomllib.loads((site.home / "core.toml").read_text())
        assert cfg["tcp"] == "127.0.0.1:1"
        assert cfg["history"]["flush_interval"] == "200ms"
        assert cfg["watch"]["stale_factor"] == 3.0
    finally:
        site.close()


def parse(config):
    return parse_settings(RemoteConfig, config, where="extensions.usm1.config")


def test_config_errors_name_the_key(tmp_path):
    base = {"remote": "h:1", "remote_ca": "a", "remote_cert": "b", "remote_key": "c"}
    assert parse(base).prefix == ""  # the extension's name
    assert parse(base).patterns == ["**"]
    with pytest.raises(SetupError, match=r"extensions\.usm1\.config\.remote_key: missing"):
        parse({k: v for k, v in base.items() if k != "remote_key"})
    with pytest.raises(SetupError, match="perod: unknown key .did you mean 'period'"):
        parse({**base, "perod": 5})
    with pytest.raises(SetupError, match="period: must be between 100ms and 1h"):
        parse({**base, "period": 0})
    assert parse({**base, "period": "500ms"}).period == 0.5
    with pytest.raises(SetupError, match="prefix: 'USM/1' is not a device id"):
        parse({**base, "prefix": "USM/1"})
    with pytest.raises(SetupError, match="patterns: expected an array"):
        parse({**base, "patterns": "**"})
    with pytest.raises(SetupError, match=r"patterns: invalid pattern 'a\*\*'"):
        parse({**base, "patterns": ["a**"]})
    # Without a port gRPC would silently take 443.
    for bad in ("usm1.example", "10.0.0.2:", "h:0", "h:70000", "2001:db8::1:7443", ":7443"):
        with pytest.raises(SetupError, match=r"config\.remote: .* is not host:port"):
            parse({**base, "remote": bad})
    assert parse({**base, "remote": "[2001:db8::1]:7443"}).remote == "[2001:db8::1]:7443"


def local_env(tmp_path, config) -> ProcessEnv:
    config_file = tmp_path / "usm1.config.json"
    config_file.write_text(json.dumps(config))
    creds = Credentials(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    return ProcessEnv(
        name="usm1",
        target="unix:///nowhere",
        credentials=creds,
        config_file=config_file,
        home=tmp_path,
    )


def test_missing_remote_certificate_is_a_setup_error(tmp_path):
    cfg = {
        "remote": "127.0.0.1:1",
        "remote_ca": str(tmp_path / "ca.crt"),
        "remote_cert": str(tmp_path / "link.crt"),
        "remote_key": str(tmp_path / "link.key"),
    }
    with pytest.raises(SetupError, match="smx pki issue usm-link"):
        RemoteUsm(Extension(local_env(tmp_path, cfg)))
    with pytest.raises(SetupError, match="bogus: unknown key"):
        RemoteUsm(Extension(local_env(tmp_path, {**cfg, "bogus": 1})))


async def test_a_lost_reply_is_unconfirmed_then_found_under_its_key(tmp_path):
    # The remote accepted the request but the reply was lost (link blip): reporting REJECTED
    # would leave the remote running what the local requester was told was refused, and asking
    # again without a key would run it twice.
    link_id = "spiffe://remote/trusted/usm-link"
    remote_sp: dict = {}
    by_key: dict = {}

    class LossyRemote:
        """Keeps request keys as the core does; loses the first reply."""

        async def request_setpoint(self, name, value, valid_for, request_key=""):
            if request_key in by_key:
                return remote_sp[by_key[request_key]]
            sid = f"R{len(remote_sp) + 1}"
            by_key[request_key] = sid
            remote_sp[sid] = SetpointState(
                id=sid,
                name=name,
                value=value,
                status="APPLIED",
                requester=link_id,
                expires_at=time.time() + valid_for,
                applied_value=value,
            )
            raise grpc.aio.AioRpcError(  # ... but the answer never arrives
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "connection reset",
            )

        async def get_setpoint(self, *, id="", name=""):
            return remote_sp[id]

        async def outcome(self, setpoint_id, timeout=None):
            return remote_sp[setpoint_id]

    up = asyncio.Event()
    up.set()
    remote = types.SimpleNamespace(up=up, identity=link_id, client=LossyRemote())
    ext = Extension(local_env(tmp_path, {}))
    creds = Credentials("ca", "cert", "key")
    cfg = RemoteConfig(
        remote="127.0.0.1:1",
        remote_ca=creds.ca,
        remote_cert=creds.cert,
        remote_key=creds.key,
        prefix="usm1",
        forward_timeout=3,
    )
    forwarder = SetpointForwarder(ext, cfg, remote)  # type: ignore[arg-type]
    local = SetpointRequest("L1", "usm1/ess/P_set", 3000.0, "ctrl", time.time() + 60)
    result = await forwarder.handle(local)
    assert isinstance(result, Unconfirmed) and "no answer from the remote USM" in result.reason
    settled = await forwarder._settle(forwarder.unsettled["L1"])  # what reconciliation does
    assert settled == Applied(3000.0)
    assert list(remote_sp) == ["R1"] and by_key == {"L1": "R1"}  # asked twice, created once
    assert forwarder.forwarded.get("L1") == "R1"
    # Kept on disk: the next run follows R1 instead of asking again.
    again = SetpointForwarder(Extension(local_env(tmp_path, {})), cfg, remote)  # type: ignore[arg-type]
    assert again.forwarded.get("L1") == "R1"
