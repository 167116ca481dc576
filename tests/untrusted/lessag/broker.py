"""A real Mosquitto broker for the tests: a process on a free loopback port, plain or TLS with
client certificates required (a CA, a broker certificate for 127.0.0.1, client certificates,
made here with `cryptography`), persistence in its own directory so a restart keeps sessions;
and a paho subscriber that records what arrives."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from extensions.sdk.testing import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).exists()


@dataclass
class Pki:
    """A CA, the broker's certificate (127.0.0.1) and client certificates, as PEM files."""

    dir: Path

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mqtt ca")])
        self.ca_name = name
        now = dt.datetime.now(dt.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = self.dir / "ca.crt"
        self.ca.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.issue("broker", server=True)

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        crt, pem = self.dir / f"{cn}.crt", self.dir / f"{cn}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pem.chmod(0o600)
        return crt, pem


class Mosquitto:
    """`mosquitto -c conf` on 127.0.0.1:<free port>; `stop()` and `start()` again keep the
    port and the persistence file (sessions and queued messages survive a restart)."""

    def __init__(
        self,
        home: Path,
        pki: Pki | None = None,
        passwords: Path | None = None,
        acl: str | None = None,  # the text of an acl_file (anonymous rules first)
    ) -> None:
        self.home = home
        self.pki = pki
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {home}/",
            "autosave_interval 1",
            "max_queued_messages 200000",
            "max_inflight_messages 0",
            f"log_dest file {home}/mosquitto.log",
        ]
        if pki is not None:
            lines += [
                f"cafile {pki.ca}",
                f"certfile {pki.server_cert}",
                f"keyfile {pki.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if passwords is not None:
            lines += [f"password_file {passwords}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (home / "acl").write_text(acl)
            lines.append(f"acl_file {home}/acl")
        if os.geteuid() == 0:  # as root it would switch to its own user, shut out of tmp dirs
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        self.conf = home / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("mosquitto did not listen")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        path = self.home / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    seq: int | None  # the MQTT 5 user property `seq`


@dataclass
class Subscriber:
    """A paho MQTT 5 subscriber (persistent session, QoS 1) recording every message."""

    broker: Mosquitto
    topics: list[str]
    client_id: str = "test-subscriber"
    messages: list[Received] = field(default_factory=list)
    cert: tuple[Path, Path] | None = None

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, self.client_id, protocol=paho.MQTTv5)
        if self.broker.pki is not None:
            crt, key = self.cert or self.broker.pki.issue(self.client_id)
            c.tls_set(ca_certs=str(self.broker.pki.ca), certfile=str(crt), keyfile=str(key))
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.on_connect = self._connected
        c.on_message = self._message
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.reconnect_delay_set(1, 1)
        c.connect_async("127.0.0.1", self.broker.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self.subscribed.wait(10):
            raise TimeoutError("subscriber not subscribed")

    def _connected(self, client: paho.Client, *_: object) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)

    def _message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        seq = None
        props = getattr(msg, "properties", None)
        for k, v in getattr(props, "UserProperty", []) or []:
            if k == "seq":
                seq = int(v)
        with self.lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, seq))

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
