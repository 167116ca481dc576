"""Opening the connection to the SCADA/CSMS for one charge point: `<upstream>/<id>`, the
subprotocol(s) the charger offered, Basic auth and TLS as the charge point's config says (the
proxy speaks to the SCADA exactly as the charger would)."""

from __future__ import annotations

import base64
import ssl
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect

from .config import ChargePointConfig

__all__ = ["OPEN_TIMEOUT", "open_upstream", "upstream_url"]

OPEN_TIMEOUT = 5.0  # a SCADA that takes longer to accept is treated as away


def upstream_url(cp: ChargePointConfig) -> str:
    return f"{cp.upstream.rstrip('/')}/{quote(cp.id, safe='')}"


def _tls(cp: ChargePointConfig) -> ssl.SSLContext | None:
    if not cp.upstream.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=str(cp.upstream_ca) if cp.upstream_ca else None)
    if cp.upstream_cert is not None:
        key = str(cp.upstream_key) if cp.upstream_key else None
        ctx.load_cert_chain(str(cp.upstream_cert), key)
    return ctx


async def open_upstream(
    cp: ChargePointConfig, subprotocols: list[str], max_frame: int
) -> ClientConnection:
    """The SCADA connection for `cp`, offering `subprotocols` in the charger's order."""
    headers = {}
    if cp.upstream_password:
        user = cp.upstream_username or cp.id
        token = base64.b64encode(f"{user}:{cp.upstream_password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return await connect(
        upstream_url(cp),
        subprotocols=subprotocols or None,  # type: ignore[arg-type]
        additional_headers=headers,
        ssl=_tls(cp),
        compression=None,  # byte-for-byte and ~100 kB less per connection
        max_size=max_frame,
        open_timeout=OPEN_TIMEOUT,
        user_agent_header=None,
        # Processes get no proxy variables (isolation's minimal environment); None also keeps
        # urllib.request and what it loads out of the process (smx.deferred_imports).
        proxy=None,
    )
