"""lessag: the north-bound MQTT agent (untrusted). It publishes the points its policy lets it
read to an MQTT broker (SenML or the S4G line protocol), keeps what the broker cannot take in
an on-disk queue, turns GESSCon's battery profile into local ESS control and EVChCon's charging
limits into setpoint requests, and reports what the owners did with them. docs/LESSAG.md.

Run by the supervisor as `python -m untrusted.lessag` (site.toml `[agents.lessag]`).
"""

from .agent import Lessag

__all__ = ["Lessag"]
