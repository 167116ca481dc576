"""EVChCon commands end to end (a command over MQTT -> a setpoint request -> the owner's
answer in a reply with the command's id), and least privilege shown: the agent bound with
exactly the rules `needed_rules` derives from its config (no role) publishes, controls and
writes its state points without a single denial, and a command outside its rights gets the
core's PERMISSION_DENIED as an error reply, nothing else."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import paho.mqtt.publish as mqtt_publish

from extensions.sdk import Applied, Clamped, Extension
from extensions.sdk.testing import until
from smx.sdk import parse_settings
from smx.v1 import admin_service_pb2 as apb
from tests.untrusted.lessag.broker import Subscriber
from tests.untrusted.lessag.conftest import agent_config, running, sample, write
from untrusted.lessag.rights import binding_toml, needed_rules
from untrusted.lessag.settings import LessagConfig

PREFIX = "usm-t/lessag"


async def test_commands_replies_and_least_privilege(site, broker, tmp, caplog):
    cfg = agent_config(
        broker,
        tmp,
        devices=[{"id": "smm", "points": ["P", "U1"]}],
        ev={"charge_points": ["ev1", "ev2"]},
    )
    # The binding grants what a config with ev1 only needs: ev2 is outside it.
    granted = parse_settings(LessagConfig, {**cfg, "ev": {"charge_points": ["ev1"]}})
    local = site.home / "policy.local.toml"
    local.write_text(local.read_text() + "\n" + binding_toml(granted, "test-site", "narrow"))
    site.smx("admin", "reload")
    assert ("request", ["ev1/I_max_set", "ev1/P_max_set"]) in needed_rules(granted, "narrow")

    owner = Extension(site.env("ev1"))

    @owner.on_setpoint("ev1/I_max_set")
    async def limit_current(req):
        return Clamped(16.0, "cable rating 16 A") if req.value > 16 else Applied()

    @owner.on_setpoint("ev1/P_max_set")
    async def limit_power(req):
        return Applied()

    await owner.start()
    await write(site, "smm", [sample("smm/P", 900.0, time.time())])
    sub = Subscriber(broker, [f"{PREFIX}/#"])
    try:
        await until(lambda: owner.client.declared("ev1/P_max_set"))
        caplog.set_level(logging.WARNING, logger="lessag")
        async with running(site, cfg, name="narrow") as agent:
            await until(lambda: agent.link.connected and agent.client.connected)

            def rights_warnings() -> list[str]:
                return [
                    r.getMessage() for r in caplog.records if "does not grant" in r.getMessage()
                ]

            # At start: what the config needs and the core does not grant, in one warning.
            said = await until(rights_warnings, what="the missing rights named")
            assert "request ev2/I_max_set, request ev2/P_max_set;" in said[0]
            assert "ev1" not in said[0] and "smm" not in said[0]

            def command(body: object) -> None:
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                mqtt_publish.single(f"{PREFIX}/evchcon/command", payload, qos=1, port=broker.port)

            def replies(cmd_id: object) -> list[dict]:
                got = [json.loads(m.payload) for m in sub.on(f"{PREFIX}/evchcon/reply")]
                return [r for r in got if r.get("id") == cmd_id]

            command({"id": "c1", "cp": "ev1", "I_max": 32, "valid_for": 60})
            done = await until(lambda: [r for r in replies("c1") if r["status"] == "CLAMPED"])
            assert done[0]["applied"] == 16.0 and done[0]["reason"] == "cable rating 16 A"
            assert done[0]["setpoint"] == "ev1/I_max_set" and done[0]["setpoint_id"]
            assert replies("c1")[0]["status"] == "PENDING"  # the request's id, at once

            command({"id": "c2", "cp": "ev1", "P_max": 7400})
            await until(lambda: [r for r in replies("c2") if r["status"] == "APPLIED"])

            command({"id": "c3", "cp": "ev2", "I_max": 10})  # configured, not granted
            refused = (await until(lambda: replies("c3")))[0]
            assert refused["status"] == "ERROR" and refused["error"].startswith("PERMISSION_DENIED")

            command({"id": "c4", "cp": "ev9", "I_max": 10})
            command({"id": "c5", "cp": "ev1"})
            command(b"\xff not json")
            unknown = (await until(lambda: replies("c4")))[0]
            assert unknown["field"] == "cp"
            assert (
                unknown["error"]
                == "cp: 'ev9' is not in ev.charge_points (ev1, ev2): this agent may not command it"
            )
            command({"id": "c6", "I_max": 10})
            no_cp = (await until(lambda: replies("c6")))[0]
            assert no_cp["field"] == "cp" and no_cp["error"].startswith("cp: missing")
            assert (await until(lambda: replies("c5")))[0]["field"] == "I_max"
            assert (await until(lambda: replies(None)))[0]["field"] == "$"

            # What it publishes and the state points it writes need nothing more.
            await until(lambda: sub.on(f"{PREFIX}/smm/data"), what="data")
            async with site.client("admin") as admin:

                async def both() -> dict | None:  # an error until they are written
                    got = await admin.get_points(["narrow/mqtt", "narrow/queued"])
                    return got if len(got) == 2 else None

                got = await until(both, timeout=15, step=0.2, what="narrow's state points")
                assert got["narrow/mqtt"].value == "connected"
                assert got["narrow/queued"].value == 0
                denied = await admin.stubs.admin.ListAuditRecords(
                    apb.ListAuditRecordsRequest(
                        kind="denied", identity="spiffe://test-site/untrusted/narrow"
                    )
                )
            points = [r.point for r in denied.audit_records]
            assert points == ["ev2/I_max_set"], denied.audit_records  # the one refusal
    finally:
        sub.close()
        await owner.stop()


def test_the_bindings_in_the_docs_are_what_the_demo_config_needs(tmp_path):
    """docs/LESSAG.md's site.toml keys and binding, docs/POLICY.md's generated binding and the
    demo's own site.toml all come from the demo's lessag config: none can drift."""
    import tomllib

    from trusted.cli.demo_cmd import lessag_config, site_toml
    from trusted.supervisor.provision import site_policy_text
    from trusted.supervisor.site_config import parse_site_config
    from untrusted.lessag.rights import site_keys

    cfg = parse_settings(LessagConfig, lessag_config(tmp_path, 1883))
    docs = Path(__file__).resolve().parents[3] / "docs"
    lessag_md = (docs / "LESSAG.md").read_text()
    assert binding_toml(cfg, "demo-site", "lessag") in lessag_md
    keys = site_keys(cfg, "lessag")
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())  # TOML's spelling
    assert table in lessag_md, table
    # The demo binds lessag with these keys, and smx run makes exactly the rules of the binding.
    text = site_toml(tmp_path, 1883)
    demo = tomllib.loads(text)["agents"]["lessag"]
    assert {k: demo[k] for k in keys} == keys
    policy = site_policy_text(parse_site_config(text, "site.toml", tmp_path))
    generated = policy[
        policy.index('[[bindings]]\nidentity = "spiffe://demo-site/untrusted/lessag"') :
    ]
    generated = generated[: generated.index("\n\n") + 1] if "\n\n" in generated else generated
    rules = binding_toml(cfg, "demo-site", "lessag").split("rules = [\n")[1]
    assert "roles = []\nrules = [\n" + rules in generated, generated
    assert generated in (docs / "POLICY.md").read_text(), generated
