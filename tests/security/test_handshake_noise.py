"""Clients that fail the TLS handshake (no certificate) cost the real core's log nothing: gRPC
would write a line for each, so a flood of them would only fill the disk."""

from __future__ import annotations

import grpc

from extensions.sdk.testing import TestSite
from smx.client import CHANNEL_OPTIONS


def test_a_flood_of_handshakes_without_a_certificate_leaves_the_log_as_it_was():
    with TestSite({"meter": ("trusted", ["trusted-extension"], [])}) as site:
        ca = (site.home / "pki" / "ca.crt").read_bytes()
        log = site.home / "core.log"
        before = log.stat().st_size
        for _ in range(20):
            channel = grpc.secure_channel(
                site.target, grpc.ssl_channel_credentials(ca), options=CHANNEL_OPTIONS
            )
            try:
                grpc.channel_ready_future(channel).result(timeout=0.3)
            except grpc.FutureTimeoutError:
                pass  # refused in the handshake, as it must be
            finally:
                channel.close()
        # The core still serves, and wrote nothing about the 20 refused handshakes.
        assert site.core is not None and site.core.poll() is None
        text = log.read_bytes()[before:].decode(errors="replace")
        assert "Handshake failed" not in text and len(text) < 200, text[:500]
