"""The MQTT link (paho-mqtt 2.x): one connection to the broker, kept up for the life of the
agent, its events handed to the asyncio loop.

- MQTT 3.1.1 or 5; TLS (a CA, and a client certificate) and/or a username with a password read
  from a file; QoS 1 by default.
- A persistent session (3.1.1: clean session off; 5: clean start off with a session expiry), so
  the broker keeps the subscriptions and the messages for us while we are away.
- A retained last will `<prefix>/status` = `offline`, and `online` (retained) on every connect;
  `offline` again on a clean stop.
- Reconnects by itself, the delay doubling from `backoff_min` up to `backoff_max` (paho's own
  back-off: reset once a connection is accepted).
- Incoming messages are bounded: MQTT 5 announces a Maximum Packet Size in CONNECT (the broker
  never sends a larger packet); under 3.1.1 the broker's `message_size_limit` has to do it, and
  a larger message that arrives anyway is dropped here, before the agent sees it.
- Retained messages: a subscription says whether it takes them. One that does not (a command:
  running it again at every reconnect would act again) asks the broker not to send them (MQTT 5
  retain handling 2) and drops any that come (3.1.1, or a broker that ignores the option).

paho runs its network loop in a thread of its own; every callback is passed to the event loop
with `call_soon_threadsafe`, so the rest of the agent is single-threaded asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .settings import MqttConfig

__all__ = ["MqttLink"]

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 2.0
MAX_PACKET = 64 * 1024  # bytes: what the agent accepts from the broker (commands, profiles)
OVERSIZE_LOG_EVERY_S = 60.0


class MqttLink:
    def __init__(
        self, cfg: MqttConfig, client_id: str, prefix: str, max_packet: int = MAX_PACKET
    ) -> None:
        self.cfg = cfg
        self.max_packet = max_packet
        self.client_id = client_id
        self.prefix = prefix
        self.status_topic = f"{prefix}/status"
        self.connected = False
        self.last_error = ""
        self.connects = 0  # accepted connections so far (a reconnect is > 1)
        self.on_up: Callable[[], None] = lambda: None
        self.on_down: Callable[[], None] = lambda: None
        # (mid, accepted, the broker's reason code when it refused: MQTT 5 PUBACK >= 0x80)
        self.on_ack: Callable[..., None] = lambda mid, ok, reason="": None
        # (topic, payload, retained): `retained` only on subscriptions that take retained ones
        self.on_message: Callable[[str, bytes, bool], None] = lambda topic, payload, r: None
        self.oversized = 0  # messages over `max_packet` dropped (3.1.1: the broker sent them)
        self.ignored_retained = 0  # retained messages dropped on subscriptions that refuse them
        self._subscriptions: dict[str, bool] = {}  # topic filter -> takes retained messages
        self._oversize_logged = -OVERSIZE_LOG_EVERY_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._v5 = cfg.protocol == "5"
        self._stopping = False
        self._socket_error = ""  # paho's last socket error (its log), the cause of a drop

    # -- set-up ---------------------------------------------------------------------------------

    def subscribe(self, topic: str, retained: bool = False) -> None:
        """Subscribed now if connected, and again after every connect. `retained`: pass on the
        retained message the broker sends at each subscribe (state, such as a day profile);
        without it they are not asked for (MQTT 5) and dropped if they come."""
        self._subscriptions[topic] = retained
        if self._client is not None and self.connected:
            self._subscribe(self._client, topic, retained)

    def _subscribe(self, client: paho.Client, topic: str, retained: bool) -> None:
        if self._v5:
            handling = (
                SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                if retained
                else SubscribeOptions.RETAIN_DO_NOT_SEND
            )
            options = SubscribeOptions(qos=self.cfg.qos, retainHandling=handling)
            client.subscribe(topic, options=options)
        else:
            client.subscribe(topic, qos=self.cfg.qos)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        if self._v5:
            client = paho.Client(CallbackAPIVersion.VERSION2, self.client_id, protocol=paho.MQTTv5)
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                self.client_id,
                clean_session=False,
                protocol=paho.MQTTv311,
            )
        if cfg.ca is not None:
            client.tls_set(
                ca_certs=str(cfg.ca),
                certfile=str(cfg.cert) if cfg.cert else None,
                keyfile=str(cfg.key) if cfg.key else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if cfg.username:
            password = cfg.password_file.read_text().strip() if cfg.password_file else None
            client.username_pw_set(cfg.username, password)
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(cfg.backoff_min, cfg.backoff_max)  # type: ignore[arg-type]
        # We bound what waits for an acknowledgement ourselves (the outbox): paho sends all.
        client.max_inflight_messages_set(65535)
        client.max_queued_messages_set(0)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._received
        client.on_log = self._paho_log
        client.on_connect_fail = self._connect_failed
        kwargs: dict[str, Any] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(cfg.session_expiry)
            props.MaximumPacketSize = self.max_packet  # the broker sends nothing larger
            kwargs = {"clean_start": False, "properties": props}
        client.connect_async(cfg.host, cfg.port, keepalive=int(cfg.keepalive), **kwargs)
        self._client = client
        client.loop_start()  # connects, and reconnects, in paho's thread

    async def stop(self) -> None:
        """`offline` (retained) and a clean disconnect, so the will is not sent."""
        client, self._client = self._client, None
        if client is None:
            return
        self._stopping = True
        if self.connected:
            info = client.publish(self.status_topic, b"offline", qos=1, retain=True)
            await asyncio.to_thread(info.wait_for_publish, STOP_TIMEOUT_S)
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self.connected = False

    # -- sending --------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, seq: int = 0) -> int | None:
        """Hand a message to paho; its mid (the acknowledgement will name it), or None when
        paho refused it. A message handed while the connection just dropped is kept by paho
        and sent after the reconnect, so it counts as handed."""
        if self._client is None:
            return None
        props = None
        if self._v5 and seq:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("seq", str(seq))  # a consumer can drop a re-delivery
        try:
            info = self._client.publish(topic, payload, qos=self.cfg.qos, properties=props)
        except (ValueError, RuntimeError) as err:
            log.warning("cannot publish on %s: %s", topic, err)
            return None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return None
        if self.cfg.qos == 0:  # nothing will acknowledge it
            assert self._loop is not None
            self._loop.call_soon(self.on_ack, info.mid, True)
        return info.mid

    def publish_now(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Fire and forget (status, replies that must not wait behind a backlog)."""
        if self._client is not None:
            self._client.publish(topic, payload, qos=self.cfg.qos, retain=retain)

    # -- paho's callbacks (its thread) ----------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _connected(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._call(self._refused, f"broker refused the connection: {rc}")
            return
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        for topic, retained in list(self._subscriptions.items()):
            self._subscribe(client, topic, retained)
        self._call(self._up, bool(getattr(flags, "session_present", False)))

    def _connect_failed(self, _c: paho.Client, _u: Any) -> None:
        # paho calls this inside its `except OSError`: the exception is the reason.
        err = sys.exc_info()[1]
        where = f"cannot connect to {self.cfg.host}:{self.cfg.port}"
        self._call(self._refused, f"{where}: {describe(err) if err else 'unknown error'}")

    def _paho_log(self, _c: paho.Client, _u: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR and "socket" in text:
            self._socket_error = text  # read by _disconnected, next in this thread

    def _disconnected(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        cause, self._socket_error = self._socket_error, ""
        self._call(self._down, str(rc), describe_text(cause) if cause else "")

    def _published(self, _c: paho.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._call(self.on_ack, mid, False, f"{rc} ({rc.value})")
        else:
            self._call(self.on_ack, mid, True)

    def _received(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        size = len(msg.payload)
        if size > self.max_packet:  # 3.1.1: nothing told the broker; not passed on
            self._call(self._too_big, msg.topic, size)
            return
        retained = bool(msg.retain)
        if retained and not self._takes_retained(msg.topic):
            self._call(self._retained_ignored, msg.topic)
            return
        self._call(self.on_message, msg.topic, bytes(msg.payload), retained)

    def _takes_retained(self, topic: str) -> bool:
        return any(
            takes and paho.topic_matches_sub(sub, topic)
            for sub, takes in list(self._subscriptions.items())
        )

    # -- the same, in the event loop ------------------------------------------------------------

    def _up(self, session_present: bool) -> None:
        self.connected = True
        self.connects += 1
        self.last_error = ""
        log.info(
            "connected to %s:%d (MQTT %s, session %s)",
            self.cfg.host,
            self.cfg.port,
            self.cfg.protocol,
            "resumed" if session_present else "new",
        )
        self.on_up()

    def _down(self, why: str, cause: str = "") -> None:
        was = self.connected
        self.connected = False
        if cause and not was:  # a connection attempt that failed: the socket says why
            self._refused(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {cause}")
        elif was or not self.last_error:  # keep the broker's refusal, which says more
            self.last_error = f"disconnected: {why}" + (f" ({cause})" if cause else "")
        if was and not self._stopping:
            log.warning("lost the broker %s:%d: %s", self.cfg.host, self.cfg.port, why)
            self.on_down()

    def _too_big(self, topic: str, size: int) -> None:
        self.oversized += 1
        now = time.monotonic()
        if now - self._oversize_logged >= OVERSIZE_LOG_EVERY_S:  # a flood is a line a minute
            self._oversize_logged = now
            log.warning(
                "dropped a message of %d bytes on %s (over %d; %d dropped so far): set the "
                "broker's message_size_limit under MQTT 3.1.1",
                size,
                topic,
                self.max_packet,
                self.oversized,
            )

    def _retained_ignored(self, topic: str) -> None:
        self.ignored_retained += 1
        log.info("ignored a retained message on %s (it would act again at each connect)", topic)

    def _refused(self, why: str) -> None:
        if why != self.last_error:
            log.warning("%s", why)
        self.last_error = why


CLIENT_CERT_ALERTS = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED", "DECRYPT_ERROR")


def describe(err: BaseException) -> str:
    """A connection error in words: what the broker or the network did."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"the broker's certificate failed verification ({err.verify_message})"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens on that port?)"
    if isinstance(err, socket.gaierror):
        return f"the host name does not resolve ({err.strerror})"
    if isinstance(err, TimeoutError | socket.timeout):
        return "timed out"
    return describe_text(str(err) or type(err).__name__)


def describe_text(text: str) -> str:
    """The same from paho's log line (`failed to receive on socket: [SSL: ...] ...`)."""
    found = re.search(r"\[SSL: ([A-Z0-9_]+)\]", text)
    if found is None:
        return text.removeprefix("failed to receive on socket: ")
    reason = found.group(1)
    if "ALERT" in reason and any(a in reason for a in CLIENT_CERT_ALERTS):
        return f"the broker rejected our client certificate (TLS alert {reason})"
    if "ALERT" in reason:
        return f"the broker ended the TLS handshake (TLS alert {reason})"
    return f"TLS error {reason}"
