"""The MQTT link against a real Mosquitto: MQTT 5 and 3.1.1, plain, TLS with a client
certificate, a username with its password from a file; status online/offline (retained);
a config mistake is one line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import sqlite3
import subprocess
import time

import pytest

from extensions.sdk.testing import until
from smx.process_env import SetupError
from tests.untrusted.lessag.broker import Mosquitto, Pki, Subscriber
from tests.untrusted.lessag.conftest import agent_config, running, sample, write
from untrusted.lessag import Lessag

STATUS = "usm-t/lessag/status"
DATA = "usm-t/lessag/smm/data"


async def test_mqtt5_plain_publishes_senml_and_tells_its_status(site, broker, tmp):
    await write(site, "smm", [sample("smm/P", 1500.0, time.time())])
    sub = Subscriber(broker, ["usm-t/lessag/#"])
    try:
        async with running(site, agent_config(broker, tmp)) as agent:
            await until(lambda: sub.on(DATA), what="a data message")
            pack = json.loads(sub.on(DATA)[0].payload)
            assert pack[0]["bn"] == "test-site/smm/"
            power = next(r for r in pack if r["n"] == "P")  # other tests wrote other points
            assert power["u"] == "W" and power["v"] == 1500.0
            assert sub.on(STATUS)[0].payload == b"online"
            assert agent.link.connected and agent.health()["devices"]["mqtt"]["ok"]
        await until(lambda: sub.on(STATUS)[-1].payload == b"offline", what="offline")
        assert sub.on(DATA)[0].seq is not None  # MQTT 5: the publish id rides along
    finally:
        sub.close()
    # Retained: a newcomer learns the agent's state at once.
    late = Subscriber(broker, [STATUS], client_id="late")
    try:
        got = await until(lambda: late.on(STATUS), what="retained status")
        assert got[0].payload == b"offline" and got[0].retain
    finally:
        late.close()


async def test_mqtt311_over_tls_with_a_client_certificate(site, tmp):
    pki = Pki(tmp / "pki")
    crt, key = pki.issue("lessag")
    with Mosquitto(tmp / "tls-broker", pki=pki) as broker:
        sub = Subscriber(broker, [DATA])
        await write(site, "smm", [sample("smm/P", 42.0, time.time())])
        mqtt = {"protocol": "3.1.1", "ca": str(pki.ca), "cert": str(crt), "key": str(key)}
        cfg = agent_config(broker, tmp, mqtt=mqtt, format="influx")
        try:
            async with running(site, cfg):
                got = await until(lambda: sub.on(DATA), what="data over TLS")
            line = got[0].payload
            assert line.startswith(b"test-site-smm ") and b"P=42.0," in line
            assert got[0].seq is None  # no user properties in MQTT 3.1.1
        finally:
            sub.close()


async def test_username_and_password_from_a_file(site, tmp):
    passwords = tmp / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "lessag", "s3cret"], check=True)
    (tmp / "secret").write_text("s3cret\n")
    (tmp / "wrong").write_text("nope\n")
    with Mosquitto(tmp / "pw-broker", passwords=passwords) as broker:
        good = agent_config(
            broker, tmp, mqtt={"username": "lessag", "password_file": str(tmp / "secret")}
        )
        async with running(site, good) as agent:
            await until(lambda: agent.link.connected, what="connected with a password")
        bad = agent_config(
            broker, tmp, mqtt={"username": "lessag", "password_file": str(tmp / "wrong")}
        )
        async with running(site, bad) as agent:
            await until(lambda: "refused" in agent.link.last_error, what="refusal")
            assert not agent.link.connected
            assert agent.health()["devices"]["mqtt"]["ok"] is False


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mqtt": {"prot": "5"}}, "agents.lessag.config.mqtt.prot: unknown key (did you mean"),
        ({"mqtt": {"protocol": "4"}}, 'agents.lessag.config.mqtt.protocol: "4" is not a choice'),
        ({"format": "json"}, 'agents.lessag.config.format: "json" is not a choice'),
        ({"mqtt": {"cert": "c.crt"}}, "agents.lessag.config.mqtt: cert and key go together"),
        ({"queue": {"max_size": "lots"}}, "agents.lessag.config.queue.max_size: expected a size"),
        ({"ev": {"charge_points": ["cp1"]}}, "charge points are named ev<N>, not cp1"),
        ({"devices": [{"id": "smm", "type": "METER"}]}, 'devices[0].type: "METER" is not'),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_key(site, config, message):
    with pytest.raises(SetupError) as err:
        Lessag(site.env("lessag", config))
    assert message in str(err.value) and "\n" not in str(err.value)


async def test_messages_the_broker_refuses_are_counted_logged_once_and_degrade(site, tmp, caplog):
    """Mosquitto's ACL refuses the data topic (MQTT 5 PUBACK 135): once lost silently."""
    acl = (
        "topic readwrite usm-t/lessag/status\n"
        "topic readwrite usm-t/lessag/gesscon/#\n"
        "topic readwrite usm-t/lessag/evchcon/#\n"
        f"topic read {DATA}\n"
    )
    await write(site, "smm", [sample("smm/P", 9.0, time.time())])
    with Mosquitto(tmp / "broker", acl=acl) as broker:
        cfg = agent_config(broker, tmp, publish_every="50ms")
        with caplog.at_level(logging.INFO, logger="untrusted.lessag"):
            async with running(site, cfg) as agent:
                await until(lambda: agent.outbox.dropped >= 5, what="refusals counted")
                health = agent.health()
                assert health["state"] == "degraded"
                error = health["devices"]["broker"]["last_error"]
                assert DATA in error and "Not authorized" in error and "135" in error
                assert agent.link.connected
                dropped = agent.outbox.dropped
        warned = [r.getMessage() for r in caplog.records if "refuses messages" in r.getMessage()]
        assert len(warned) == 1 and DATA in warned[0]
    with sqlite3.connect(tmp / "queue.db") as db:  # the count survives a restart
        saved = db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]
    assert saved >= dropped


async def test_a_rejected_client_certificate_and_a_refused_connection_say_why(site, tmp, caplog):
    """Once "Unspecified error" and a bare "cannot connect": the TLS or socket error now, in the
    log (once per distinct reason) and in the health that `smx status` shows."""
    pki, stranger = Pki(tmp / "pki"), Pki(tmp / "other-ca")
    crt, key = stranger.issue("lessag")  # signed by a CA the broker does not trust
    with Mosquitto(tmp / "tls-broker", pki=pki) as broker:
        mqtt = {"ca": str(pki.ca), "cert": str(crt), "key": str(key), "backoff_max": 1}
        cfg = agent_config(broker, tmp, mqtt=mqtt)
        with caplog.at_level(logging.WARNING, logger="untrusted.lessag"):
            async with running(site, cfg) as agent:

                def error() -> str:
                    return str(agent.health()["devices"]["mqtt"]["last_error"])

                await until(lambda: "client certificate" in error(), what="the TLS alert")
                assert "the broker rejected our client certificate (TLS alert" in error()
                first = agent.link.connects
                await asyncio.sleep(3)  # several attempts, the same reason
                assert agent.link.connects == first == 0
        said = [r.getMessage() for r in caplog.records if "client certificate" in r.getMessage()]
        assert len(said) == 1, said
    nobody = Mosquitto(tmp / "nobody")  # never started: nothing listens
    async with running(site, agent_config(nobody, tmp, mqtt={"backoff_max": 1})) as agent:
        await until(
            lambda: "connection refused" in agent.health()["devices"]["mqtt"]["last_error"],
            what="connection refused",
        )


def test_an_mqtt_key_this_user_cannot_read_is_one_setup_line(site, tmp, monkeypatch):
    """Under `smx run` as root the agent runs as a user of its own: a key copied in as root was
    once a bare PermissionError in a restart loop. Now a SetupError (exit code 2), one line: the
    path, the user, the chown."""
    pki = Pki(tmp / "pki")
    crt, key = pki.issue("lessag")
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:  # root reads every file: the file system's answer to another user

        def denied(path: object, *args: object, **kw: object) -> object:
            if str(path) == str(key):
                raise PermissionError(13, "Permission denied", str(path))
            return open(path, *args, **kw)  # type: ignore[call-overload]

        monkeypatch.setattr("smx.process_env.open", denied, raising=False)
    else:
        key.chmod(0)
    mqtt = {"ca": str(pki.ca), "cert": str(crt), "key": str(key)}
    with pytest.raises(SetupError) as err:
        Lessag(site.env("lessag", agent_config(Mosquitto(tmp / "broker"), tmp, mqtt=mqtt)))
    line = str(err.value)
    assert f"agents.lessag.config.mqtt.key: cannot read {key} as user {user}" in line
    assert f"`chown {user} {key}`" in line and "\n" not in line
    missing = {**mqtt, "ca": str(tmp / "nope.crt")}
    with pytest.raises(SetupError, match="mqtt.ca: cannot read .*nope.crt: No such file"):
        Lessag(site.env("lessag", agent_config(Mosquitto(tmp / "broker"), tmp, mqtt=missing)))
