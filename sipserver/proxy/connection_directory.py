"""What the core may ask of the connection pool, which lives in the transport layer: the
open connection to a peer (to reuse it, RFC 5923) and the certificate a connection's far
end presented (for the call line). The pool implements this; the core never imports it."""

from __future__ import annotations

import functools
from typing import Protocol

from sipserver.config.schema import IPNetwork, PeerSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.sip.flow import Flow, Transport


class ConnectionDirectory(Protocol):
    def flow_to(self, peer: str, transport: Transport) -> Flow | None:
        """An open connection to the allow-listed peer of that name, if there is one."""
        ...

    def certificate_of(self, flow: Flow) -> CertInfo | None:
        """The verified certificate of the far end of an outbound TLS flow."""
        ...

    def flow_of(self, connection_id: int) -> Flow | None:
        """The connection of that id, if it is still open."""
        ...

    def connection_id_of(self, flow: Flow) -> int | None:
        """The connection a flow went out on (an outbound leg opened for it, by address)."""
        ...


class NoConnections:
    """A directory that knows no connection: for the core used on its own (tests, tools)."""

    def flow_to(self, peer: str, transport: Transport) -> Flow | None:
        return None

    def certificate_of(self, flow: Flow) -> CertInfo | None:
        return None

    def flow_of(self, connection_id: int) -> Flow | None:
        return None

    def connection_id_of(self, flow: Flow) -> int | None:
        return flow.connection_id


def single_address(target: PeerSettings) -> str | None:
    """The one address configured for the target, if it has one."""
    return _single_address(target.addresses)


@functools.lru_cache(maxsize=1024)
def _single_address(addresses: tuple[IPNetwork, ...]) -> str | None:
    # Asked for every attempt: formatting an address costs more than the cache lookup.
    return next((str(net.network_address) for net in addresses if net.num_addresses == 1), None)


def target_flow(
    connections: ConnectionDirectory, target: PeerSettings, transport: Transport
) -> Flow | None:
    """Where a request to a configured target goes without DNS: a connection we already
    share with it (RFC 5923-style reuse), else its single configured address; None when
    it must be located by its FQDN (RFC 3263)."""
    if transport.reliable and (flow := connections.flow_to(target.name, transport)):
        return flow
    host = single_address(target)
    if host is None:
        return None
    return Flow(transport, ("", 0), (host, target.send_port), None, server_name=target.fqdn)
