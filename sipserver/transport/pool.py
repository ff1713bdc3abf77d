"""The one table of TCP/TLS connections, inbound and outbound: each with the peer it
belongs to and the certificate its far end presented; the caps on how many may be open;
and what waits for an outbound connection being opened. The core asks it (as its
`ConnectionDirectory`) for a connection to reuse and for a target's certificate."""

from __future__ import annotations

from collections import Counter

from sipserver.config.schema import Config, LimitsSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.transport.connection import StreamConnection
from sipserver.transport.limits import ConnectionTable

OutboundKey = tuple[str, str, int]  # transport, host, port


def outbound_key(flow: Flow) -> OutboundKey:
    return (flow.transport, flow.remote[0], flow.remote[1])


class ConnectionPool:
    def __init__(self, limits: LimitsSettings) -> None:
        self.caps = ConnectionTable.of(limits)
        self._by_id: dict[int, StreamConnection] = {}
        self._by_peer: dict[tuple[str, str], StreamConnection] = {}
        self._outbound: dict[OutboundKey, StreamConnection] = {}
        self._waiting: dict[OutboundKey, list[Transmit]] = {}
        # The certificate each outbound target presented last, for call lines written after
        # its connection closed.
        self._target_certs: dict[OutboundKey, CertInfo] = {}
        self._target_ids: dict[OutboundKey, int] = {}  # and the connection it was on

    # --- open connections ---------------------------------------------------------------
    def add(self, connection: StreamConnection, *, outbound: bool = False) -> None:
        self._by_id[connection.connection_id] = connection
        if connection.peer is not None:
            self._by_peer[(connection.peer.name, connection.flow.transport)] = connection
        if outbound:
            key = outbound_key(connection.flow)
            self._outbound[key] = connection
            if connection.peer_cert is not None:
                self._target_certs[key] = connection.peer_cert
            self._target_ids[key] = connection.connection_id

    def remove(self, connection: StreamConnection) -> None:
        self._by_id.pop(connection.connection_id, None)
        if connection.peer is not None:
            key = (connection.peer.name, connection.flow.transport)
            if self._by_peer.get(key) is connection:
                del self._by_peer[key]
        key_out = outbound_key(connection.flow)
        if self._outbound.get(key_out) is connection:
            del self._outbound[key_out]

    def get(self, connection_id: int) -> StreamConnection | None:
        return self._by_id.get(connection_id)

    def close_removed_softphones(self, config: Config) -> None:
        """A softphone taken out of the configuration may not keep the connections it
        registered over (its bindings went with the reload)."""
        softphones = {p.name for p in config.peers if p.is_softphone}
        for connection in list(self._by_id.values()):
            peer = connection.peer
            if peer is not None and peer.is_softphone and peer.name not in softphones:
                connection.close("peer removed from the configuration")

    def count_by_transport(self) -> Counter[str]:
        return Counter(str(c.flow.transport) for c in self._by_id.values())

    # --- what the core asks (ConnectionDirectory) -----------------------------------------
    def flow_to(self, peer: str, transport: Transport) -> Flow | None:
        connection = self._by_peer.get((peer, transport))
        return connection.flow if connection is not None else None

    def flow_of(self, connection_id: int) -> Flow | None:
        connection = self._by_id.get(connection_id)
        return connection.flow if connection is not None else None

    def connection_id_of(self, flow: Flow) -> int | None:
        if flow.connection_id is not None or not flow.transport.reliable:
            return flow.connection_id
        connection = self._outbound.get(outbound_key(flow))
        if connection is not None:
            return connection.connection_id
        return self._target_ids.get(outbound_key(flow))

    def certificate_of(self, flow: Flow) -> CertInfo | None:
        if flow.connection_id is not None and (connection := self._by_id.get(flow.connection_id)):
            return connection.peer_cert
        return self._target_certs.get(outbound_key(flow))

    # --- outbound legs ------------------------------------------------------------------
    def flow_for(self, flow: Flow) -> Flow:
        """The flow a transmit will really go over: its connection's, with our local
        address and port, when one is open (for the capture)."""
        if flow.connection_id is not None:
            connection = self._by_id.get(flow.connection_id)
        else:
            connection = self._outbound.get(outbound_key(flow))
        return connection.flow if connection is not None else flow

    def send_outbound(self, transmit: Transmit) -> bool:
        """Queue on the open connection to the flow's far end, or hold it until one is
        open. True when nobody is opening one yet: the caller must start that."""
        key = outbound_key(transmit.flow)
        connection = self._outbound.get(key)
        if connection is not None:
            connection.queue(transmit)
            return False
        if key in self._waiting:
            self._waiting[key].append(transmit)
            return False
        self._waiting[key] = [transmit]
        return True

    def take_waiting(self, flow: Flow) -> list[Transmit]:
        """What waited for the connection to `flow`: to send now, or to give up on."""
        return self._waiting.pop(outbound_key(flow), [])
