"""Where a message travels: the transport, the two addresses and, for streams, which
connection. The transport layer hands these in with every message and sends `Transmit`s
out; the core never sees a socket."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Transport(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"

    @property
    def reliable(self) -> bool:
        return self is not UDP


# Members read on every message, as module constants (C statics when compiled): reading one
# off the class goes through EnumType.__getattr__, a hook even the compiled core pays.
UDP: Final = Transport.UDP
TLS: Final = Transport.TLS

# Calling the enum (Transport("tls")) runs interpreted code even in the compiled core.
_BY_NAME: Final[dict[str, Transport]] = {transport.value: transport for transport in Transport}


def transport_named(name: str) -> Transport | None:
    """The transport with this lower-case name; None for one we do not speak."""
    return _BY_NAME.get(name)


@dataclass(slots=True, init=False)
class Flow:
    """Where a message came from, and so where its answers go. Immutable, as Via is (see
    there why the fields are Final and __init__ is written out). __eq__ and __hash__ are
    written out for the same reason: flows key the connection and transaction tables."""

    transport: Final[Transport]
    local: Final[tuple[str, int]]
    remote: Final[tuple[str, int]]
    connection_id: Final[int | None]  # set for tcp/tls connections that exist
    server_name: Final[str | None]  # outbound: the FQDN the far end must prove (TLS, SNI)

    def __init__(
        self,
        transport: Transport,
        local: tuple[str, int],
        remote: tuple[str, int],
        connection_id: int | None = None,
        server_name: str | None = None,
    ) -> None:
        self.transport = transport
        self.local = local
        self.remote = remote
        self.connection_id = connection_id
        self.server_name = server_name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Flow):
            return NotImplemented
        return (
            self.transport == other.transport
            and self.local == other.local
            and self.remote == other.remote
            and self.connection_id == other.connection_id
            and self.server_name == other.server_name
        )

    def __hash__(self) -> int:
        return hash((self.transport, self.local, self.remote, self.connection_id, self.server_name))

    @property
    def reliable(self) -> bool:
        return self.transport is not UDP

    @property
    def remote_text(self) -> str:
        return format_address(self.remote)


@dataclass(slots=True, unsafe_hash=True, init=False)
class Transmit:
    """Bytes to send on a flow. Immutable, as Via is."""

    flow: Final[Flow]
    data: Final[bytes]
    close_after: Final[bool]  # for streams: close once sent (framing was lost)

    def __init__(self, flow: Flow, data: bytes, close_after: bool = False) -> None:
        self.flow = flow
        self.data = data
        self.close_after = close_after


def format_address(address: tuple[str, int]) -> str:
    """host:port, with IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
