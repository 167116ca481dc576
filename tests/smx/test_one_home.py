"""Contracts with one home in smx/ that the core and its clients meet on: the core's name, the
identity URI and the core's default socket."""

from __future__ import annotations

from pathlib import Path

from smx.client import CHANNEL_OPTIONS
from smx.identity import SERVER_NAME, Identity, site_uri
from smx.process_env import RunPaths


def test_an_identity_is_below_its_site_uri() -> None:
    core = Identity("usm-0017", "trusted", SERVER_NAME)
    assert core.uri == "spiffe://usm-0017/trusted/smxcore"
    assert core.uri.startswith(site_uri("usm-0017") + "/")
    assert Identity.parse(core.uri) == core


def test_clients_name_the_server_the_core_is() -> None:
    assert ("grpc.ssl_target_name_override", SERVER_NAME) in CHANNEL_OPTIONS


def test_the_core_listens_where_clients_look_by_default(tmp_path: Path) -> None:
    from trusted.core.config import load_core_config

    assert RunPaths(tmp_path).socket == tmp_path / "core.sock"
    assert load_core_config(None, home=tmp_path).socket == RunPaths(tmp_path).socket
