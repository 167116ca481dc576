"""A small GESSCon simulator for the demo and tests: publishes a day profile (today and
tomorrow, local time) to `<prefix>/gesscon/profile` at start and every `every` seconds,
retained (an agent that connects later gets the latest at once), over
the same MQTT settings lessag uses (the broker, TLS files). The plan: charge from the midday PV
(priority 1), discharge in the evening peak (priority 2), self-consumption otherwise (0).

    [simulators.gesscon-sim]
    module = "untrusted.lessag.gesscon_sim"
    [simulators.gesscon-sim.config]
    port = 8883
    prefix = "demo-site/lessag"
    ca = "/path/ca.crt"          # TLS when set, with cert and key
    cert = "/path/gesscon.crt"
    key = "/path/gesscon.key"
    every = 3600
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from smx.process_env import load_config

__all__ = ["day_profile", "main"]


def day_profile(today: dt.date, msg_id: str) -> dict[str, Any]:
    power = [0.0] * 24
    priority = [0] * 24
    for h in range(10, 15):  # charge from the PV at midday
        power[h], priority[h] = 3000.0, 1
    for h in range(18, 21):  # give it back in the evening peak
        power[h], priority[h] = -4000.0, 2
    return {
        "id": msg_id,
        "Date_crt": today.isoformat(),
        "Date_next": (today + dt.timedelta(days=1)).isoformat(),
        "Period": 60,
        "P_bat_DC_set_now": power,
        "Priority_set_now": priority,
        "P_bat_DC_set_next": power,
        "Priority_set_next": priority,
    }


def main() -> None:
    cfg = load_config(os.environ)
    client = paho.Client(CallbackAPIVersion.VERSION2, "gesscon-sim", protocol=paho.MQTTv5)
    if cfg.get("ca"):
        client.tls_set(ca_certs=cfg["ca"], certfile=cfg.get("cert"), keyfile=cfg.get("key"))
    client.connect_async(cfg.get("host", "127.0.0.1"), int(cfg.get("port", 1883)))
    client.loop_start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    topic = f"{cfg.get('prefix', 'demo-site/lessag')}/gesscon/profile"
    n = 0
    while not stop.is_set():
        n += 1
        today = dt.datetime.now().astimezone().date()
        body = json.dumps(day_profile(today, f"sim-{today}-{n}")).encode()
        # Retained: an agent that connects later (or starts after the simulator) gets it at
        # once; queued by paho until connected.
        client.publish(topic, body, qos=1, retain=True)
        stop.wait(float(cfg.get("every", 3600)))
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
