"""Connecting to the core: a secure channel from certificate files, and error reasons.

Used by the `smx` CLI, the supervisor, the SDK (smx.sdk, extensions.sdk) and tests alike; it
depends on the generated API only. The one list of channel options is here, so every client
reconnects and detects a dead peer the same way.

grpc and the generated stubs are imported by the functions that use them, not by this module:
the supervisor (`smx run`) names certificate files and socket targets here for its children
and checks the core without gRPC, and `import grpc` costs a process some 9 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smx.identity import SERVER_NAME

if TYPE_CHECKING:
    import grpc
    from google.rpc import error_details_pb2

__all__ = [
    "CHANNEL_OPTIONS",
    "SERVER_NAME",
    "TRANSIENT",
    "Credentials",
    "Stubs",
    "describe_error",
    "error_info",
    "error_reason",
    "unix_target",
]

# grpcio ships no type information.
Channel = Any
AioChannel = Any
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", SERVER_NAME),
    ("grpc.default_authority", SERVER_NAME),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Notice a restarted core within a second, not after grpc's default back-off of up to two
    # minutes; a try costs one connect on a local socket.
    # Not grpc.min_reconnect_backoff_ms: grpc's core takes it as the time a connection attempt
    # (TLS handshake included) may last, and at 100 ms a loaded board fails handshakes with
    # "handshaker shutdown".
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A peer gone without closing (a remote USM behind a dead link) is found within 15 s on an
    # open stream; the core allows pings every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
# Codes after which retrying later can succeed: the core is away or restarting. Made on first
# use (module __getattr__ below), as it needs grpc.
TRANSIENT: frozenset[grpc.StatusCode]


def __getattr__(name: str) -> Any:
    if name == "TRANSIENT":
        import grpc

        codes = grpc.StatusCode
        value = frozenset({codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED, codes.CANCELLED})
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unix_target(path: Path | str) -> str:
    return f"unix://{Path(path).resolve()}"


@dataclass(frozen=True)
class Credentials:
    ca: Path
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        for field in ("ca", "cert", "key"):  # accept str paths too
            object.__setattr__(self, field, Path(getattr(self, field)))

    @classmethod
    def from_site(cls, home: Path | str, name: str) -> Credentials:
        """The files `smx pki issue NAME` wrote under the site directory."""
        pki = Path(home) / "pki"
        return cls(pki / "ca.crt", pki / "clients" / f"{name}.crt", pki / "clients" / f"{name}.key")

    def check(self) -> None:
        for what, path in (
            ("CA certificate", self.ca),
            ("certificate", self.cert),
            ("private key", self.key),
        ):
            if not path.is_file():
                raise FileNotFoundError(f"{what} not found: {path}")

    def grpc(self) -> grpc.ChannelCredentials:
        import grpc

        self.check()
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )

    def aio_channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> AioChannel:
        import grpc

        return grpc.aio.secure_channel(
            target, self.grpc(), options=CHANNEL_OPTIONS + list(options or ())
        )

    def channel(self, target: str) -> Channel:
        import grpc

        return grpc.secure_channel(target, self.grpc(), options=CHANNEL_OPTIONS)


class Stubs:
    """The four SMX services on one channel (sync or aio)."""

    def __init__(self, channel: Channel | AioChannel) -> None:
        from smx.v1 import (
            admin_service_pb2_grpc,
            control_service_pb2_grpc,
            identity_service_pb2_grpc,
            point_service_pb2_grpc,
        )

        self.channel = channel
        self.points = point_service_pb2_grpc.PointServiceStub(channel)
        self.control = control_service_pb2_grpc.ControlServiceStub(channel)
        self.identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)


def describe_error(err: BaseException | None) -> str:
    """One line for a log or a health file: `UNAVAILABLE [REASON]: details` for an RPC error."""
    import grpc

    if isinstance(err, grpc.aio.AioRpcError):
        reason = error_reason(err)
        return f"{err.code().name}{f' [{reason}]' if reason else ''}: {err.details()}"
    if err is None:
        return "unknown"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def error_reason(err: grpc.RpcError) -> str | None:
    """The stable ErrorInfo reason of an SMX error (e.g. "PERMISSION_NOT_GRANTED"), from the
    status details the core attaches; None for errors raised by grpc itself."""
    info = error_info(err)
    return info.reason if info is not None else None


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo the core attached to an error (reason + metadata such as `point`)."""
    from google.rpc import error_details_pb2, status_pb2

    metadata = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in metadata or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None
