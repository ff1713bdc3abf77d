"""Where a message travels: the transport, the two addresses and, for streams, which
connection. The transport layer hands these in with every message and sends `Transmit`s
out; the core never sees a socket."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"

    @property
    def reliable(self) -> bool:
        return self is not Transport.UDP


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from, and so where its answers go."""

    transport: Transport
    local: tuple[str, int]
    remote: tuple[str, int]
    connection_id: int | None = None  # set for tcp/tls connections that exist
    server_name: str | None = None  # outbound: the FQDN the far end must prove (TLS, SNI)

    @property
    def reliable(self) -> bool:
        return self.transport != Transport.UDP

    @property
    def remote_text(self) -> str:
        return format_address(self.remote)


@dataclass(frozen=True, slots=True)
class Transmit:
    flow: Flow
    data: bytes
    close_after: bool = False  # for streams: close once sent (framing was lost)


def format_address(address: tuple[str, int]) -> str:
    """host:port, with IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
