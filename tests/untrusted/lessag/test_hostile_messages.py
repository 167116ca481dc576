"""What a hostile or careless MQTT peer can send lessag (anyone the broker lets publish on its
command and profile topics), and the rule that holds against each:

- a retained command is not run again at every reconnect; a retained day profile (state, which
  the demo's GESSCon simulator publishes so on purpose) fills the gap of an agent with no profile
  for today and never replaces one in force;
- a message larger than the agent's Maximum Packet Size is never delivered (MQTT 5: the broker
  drops it; 3.1.1: the link drops it before the agent sees it);
- JSON nested too deeply is an ERROR reply naming "$", like any message that is not JSON;
- a command id seen within its validity (a replay, a QoS 1 re-delivery) is answered from memory,
  not requested again;
- a flood beyond the inbox is one log line when it starts and one with the count when it ends."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest

from extensions.sdk.testing import until
from smx.process_env import RunPaths
from tests.untrusted.lessag.broker import Mosquitto, Subscriber, mosquitto_available
from tests.untrusted.lessag.conftest import agent_config, running
from untrusted.lessag import agent as agent_module
from untrusted.lessag.evchcon import REMEMBER, EvCommands
from untrusted.lessag.gesscon_sim import day_profile
from untrusted.lessag.mqtt_link import MAX_PACKET, MqttLink
from untrusted.lessag.profile import ProfileError, parse_profile
from untrusted.lessag.settings import EvConfig, MqttConfig

needs_broker = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
PREFIX = "usm-t/lessag"
COMMANDS = f"{PREFIX}/evchcon/command"
PROFILES = f"{PREFIX}/gesscon/profile"
COMMAND = json.dumps({"id": "c-1", "cp": "ev1", "I_max": 0, "valid_for": 86400}).encode()


def _link(broker: Mosquitto, protocol: str, got: list[tuple[str, bytes, bool]]) -> MqttLink:
    cfg = MqttConfig(port=broker.port, protocol=protocol, backoff_min=0.1, backoff_max=0.5)  # type: ignore[arg-type]
    link = MqttLink(cfg, f"hostile-{protocol}", PREFIX)
    link.on_message = lambda topic, payload, retained: got.append((topic, payload, retained))
    link.subscribe(COMMANDS)
    link.subscribe(PROFILES, retained=True)
    return link


# -- retained messages --------------------------------------------------------------------------


@needs_broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_retained_command_is_not_run_at_connect_nor_after_a_reconnect(tmp, protocol):
    """A peer publishes `"I_max": 0` retained: the broker keeps it and sends it at every
    subscribe, so an agent that ran it would cut the charger again after each broker restart,
    forever. Commands take no retained message (MQTT 5: retain handling 2; 3.1.1: the retain
    flag checked); the retained profile on the same broker is passed on, marked retained; a
    command sent live still arrives, once."""
    got: list[tuple[str, bytes, bool]] = []
    with Mosquitto(tmp / "broker") as broker:
        mqtt_publish.single(COMMANDS, COMMAND, qos=1, retain=True, port=broker.port)
        mqtt_publish.single(PROFILES, b"{}", qos=1, retain=True, port=broker.port)
        link = _link(broker, protocol, got)
        link.start()
        try:
            await until(lambda: [g for g in got if g[0] == PROFILES], what="retained profile")
            broker.stop()  # persistence keeps the retained messages and our session
            await until(lambda: not link.connected, what="link down")
            broker.start()
            await until(lambda: link.connects >= 2 and link.connected, what="reconnect")
            await until(lambda: len([g for g in got if g[0] == PROFILES]) >= 2, what="again")
            live = json.dumps({"id": "c-2", "cp": "ev1", "I_max": 6}).encode()
            mqtt_publish.single(COMMANDS, live, qos=1, port=broker.port)
            await until(lambda: [g for g in got if g[0] == COMMANDS], what="the live command")
            await asyncio.sleep(0.2)
        finally:
            await link.stop()
    assert [g for g in got if g[0] == COMMANDS] == [(COMMANDS, live, False)]
    assert {g[2] for g in got if g[0] == PROFILES} == {True}
    if protocol == "3.1.1":  # MQTT 5 asked the broker not to send them at all
        assert link.ignored_retained >= 2


@needs_broker
async def test_a_retained_profile_fills_the_gap_once_and_never_replaces_one_in_force(
    site, broker, tmp, caplog
):
    """The demo's simulator publishes its day profile retained so that an agent started later
    gets it. The broker sends it again at every connect: taken again, it would be re-saved and
    re-accepted each time, and an older retained profile would replace a newer one sent live
    since. Rule: a retained profile is taken only when no profile for today is in force."""
    caplog.set_level(logging.DEBUG, logger="lessag")
    # No profile in force: other tests of this session's site may have left one on disk.
    (RunPaths(site.env("lessag", {}).site_dir).run / "lessag" / "profile.json").unlink(
        missing_ok=True
    )
    today = dt.datetime.now().astimezone().date()
    older = json.dumps(day_profile(today, "retained-1")).encode()
    newer = json.dumps(day_profile(today, "live-2")).encode()
    mqtt_publish.single(PROFILES, older, qos=1, retain=True, port=broker.port)
    sub = Subscriber(broker, [f"{PREFIX}/gesscon/accepted"])
    cfg = agent_config(broker, tmp, mqtt={"backoff_min": 0.1, "backoff_max": 1})

    def accepted() -> list[str]:
        return [json.loads(m.payload)["id"] for m in sub.on(f"{PREFIX}/gesscon/accepted")]

    try:
        async with running(site, cfg) as agent:
            await until(lambda: accepted() == ["retained-1"], what="the retained profile")
            mqtt_publish.single(PROFILES, newer, qos=1, port=broker.port)  # live, not retained
            await until(lambda: accepted() == ["retained-1", "live-2"], what="the live one")
            broker.stop()
            await until(lambda: not agent.link.connected)
            broker.start()
            await until(lambda: agent.link.connects >= 2 and agent.link.connected)
            await until(  # the retained profile comes again, and is ignored
                lambda: [r for r in caplog.records if "retained GESSCon profile ignored" in r.msg],
                what="the retained profile again",
            )
            assert agent.ess.store.profile is not None
            assert agent.ess.store.profile.id == "live-2"
    finally:
        sub.close()
    assert accepted() == ["retained-1", "live-2"]


# -- size ---------------------------------------------------------------------------------------


@needs_broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_message_over_the_maximum_packet_size_never_reaches_the_agent(tmp, protocol):
    """Mosquitto accepts ~256 MB messages by default: a few on the command topic would be read
    and copied whole into a Raspberry Pi agent's memory. MQTT 5: the agent announces a Maximum
    Packet Size (64 KB) in CONNECT and the broker drops larger messages for it; 3.1.1 cannot say
    so (the broker's message_size_limit must), and the link drops them before the agent. A
    message of normal size still arrives."""
    got: list[tuple[str, bytes, bool]] = []
    with Mosquitto(tmp / "broker") as broker:
        link = _link(broker, protocol, got)
        link.start()
        try:
            await until(lambda: link.connected)
            await asyncio.sleep(0.2)  # subscribed
            mqtt_publish.single(COMMANDS, b"x" * (4 * MAX_PACKET), qos=1, port=broker.port)
            mqtt_publish.single(COMMANDS, COMMAND, qos=1, port=broker.port)
            await until(lambda: got, what="the small message")
            await asyncio.sleep(0.2)
        finally:
            await link.stop()
    assert [g[1] for g in got] == [COMMAND]
    assert link.oversized == (1 if protocol == "3.1.1" else 0)


# -- JSON nested too deeply ---------------------------------------------------------------------


async def test_json_nested_too_deeply_gets_the_error_reply_of_a_message_that_is_not_json():
    """1 KB of '[' fits a command's size limit, but json.loads raises RecursionError, which is
    not a ValueError: the sender got no reply and the log a traceback per message. Both parsers
    treat it as "not JSON", with the documented ERROR naming "$"."""
    replies: list[bytes] = []

    async def request(*_: Any) -> Any:
        raise AssertionError("nothing is requested")

    ev = EvCommands(EvConfig(charge_points=["ev1"]), request, replies.append)
    await ev.handle(b"[" * 1000)
    await ev.handle(b'{"id": "c-9", "cp": ' + b"[" * 900 + b"}")
    got = [json.loads(r) for r in replies]
    assert [(r["id"], r["status"], r["field"]) for r in got] == [
        (None, "ERROR", "$"),
        (None, "ERROR", "$"),
    ]
    assert "nested too deeply" in got[0]["error"]
    with pytest.raises(ProfileError) as err:
        parse_profile(b"[" * 5000, dt.date.today(), 16 * 1024)
    assert err.value.field == "$"


# -- replayed command ids -----------------------------------------------------------------------


class _Setpoint:
    def __init__(self, n: int, name: str, value: float) -> None:
        self.id, self.name, self.status, self.value = f"sp{n}", name, "PENDING", value
        self.applied_value: float | None = None
        self.reason = ""


def _commands(now: list[float]) -> tuple[EvCommands, list[tuple], list[dict]]:
    requested: list[tuple] = []
    replies: list[dict] = []

    async def request(name: str, value: float, valid_for: float) -> Any:
        requested.append((name, value, valid_for))
        return _Setpoint(len(requested), name, value)

    ev = EvCommands(
        EvConfig(charge_points=["ev1"]),
        request,
        lambda b: replies.append(json.loads(b)),
        clock=lambda: now[0],
    )
    return ev, requested, replies


def _command(cmd_id: str, valid_for: float = 900, current: float = 6) -> bytes:
    return json.dumps(
        {"id": cmd_id, "cp": "ev1", "I_max": current, "valid_for": valid_for}
    ).encode()


async def test_a_command_id_seen_within_its_validity_is_answered_from_memory():
    """Anyone who saw one command could replay it (same id) to renew the limit, and a QoS 1
    re-delivery ran it twice. A command id is remembered for its `valid_for`: a repeat gets the
    latest reply for that id (here APPLIED, which the owner gave after the request) and requests
    nothing, whatever the repeat carries; after the validity the id may run again."""
    now = [1000.0]
    ev, requested, replies = _commands(now)
    await ev.handle(_command("c-17", valid_for=60))
    applied = _Setpoint(1, "ev1/I_max_set", 6.0)
    applied.status, applied.applied_value = "APPLIED", 6.0
    ev.outcome(applied)
    for body in (_command("c-17", valid_for=60), _command("c-17", current=32)):
        await ev.handle(body)
    assert requested == [("ev1/I_max_set", 6.0, 60.0)]
    assert [r["status"] for r in replies] == ["PENDING", "APPLIED", "APPLIED", "APPLIED"]
    assert replies[-1] == replies[1] and ev.repeats == 2
    now[0] += 61  # the limit has expired: the id is forgotten
    await ev.handle(_command("c-17", valid_for=60))
    assert len(requested) == 2


async def test_the_memory_of_command_ids_is_bounded():
    """A flood of fresh ids must not grow the agent's memory: the oldest are forgotten first."""
    now = [0.0]
    ev, requested, _ = _commands(now)
    for i in range(REMEMBER + 10):
        await ev.handle(_command(f"c-{i}"))
    assert len(ev.ran) == REMEMBER and len(ev.commands) == REMEMBER
    await ev.handle(_command(f"c-{REMEMBER + 9}"))  # recent: from memory
    assert len(requested) == REMEMBER + 10
    await ev.handle(_command("c-0"))  # forgotten
    assert len(requested) == REMEMBER + 11


# -- a flood ------------------------------------------------------------------------------------


@needs_broker
async def test_a_full_inbox_is_logged_once_per_episode_with_its_count(
    site, broker, tmp, caplog, monkeypatch
):
    """A flood on the command topic beyond the inbox was one warning per dropped message: the
    log (on an SD card) grew with the flood. One line when dropping starts, one with the count
    when the inbox has room again."""
    monkeypatch.setattr(agent_module, "INBOX_SIZE", 5)
    async with running(site, agent_config(broker, tmp, ev={"charge_points": ["ev1"]})) as agent:
        caplog.set_level(logging.INFO, logger="lessag")
        for _ in range(25):  # in one go: the inbox task cannot run in between
            agent._received(COMMANDS, b"not json", False)
        await until(lambda: agent.inbox.empty() and not agent.inbox_dropped, what="drained")
        for _ in range(8):
            agent._received(COMMANDS, b"not json", False)
        await until(lambda: agent.inbox.empty() and not agent.inbox_dropped, what="drained")
    lines = [r.getMessage() for r in caplog.records if "inbox" in r.getMessage()]
    assert len(lines) == 4, lines
    assert "dropping" in lines[0] and "20 message(s) dropped" in lines[1]
    assert "3 message(s) dropped" in lines[3]


@needs_broker
def test_the_announced_maximum_leaves_room_for_the_largest_profile_configured(site, broker, tmp):
    """`ess.max_message` may be raised above 64 KB: the agent then announces that much (and
    room for the topic), or no profile of that size could ever arrive."""
    small = agent_module.Lessag(site.env("lessag", agent_config(broker, tmp)))
    assert small.link.max_packet == MAX_PACKET
    cfg = agent_config(broker, tmp, ess={"enabled": False, "max_message": "100KB"})
    large = agent_module.Lessag(site.env("lessag", cfg))
    assert large.link.max_packet == 100 * 1024 + 1024
    small.outbox.close()
    large.outbox.close()
