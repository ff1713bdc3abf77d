"""Ourselves as each leg sees us: the host and port in our Via and Record-Route, and
whether a URI names us. Rebuilt on every reload and when the listeners know their ports."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sipserver.config.schema import Config
from sipserver.sip import proxy_ops
from sipserver.sip.flow import Flow, Transport
from sipserver.sip.message import Request
from sipserver.sip.uri import SipUri, UriError, parse_uri
from sipserver.sip.via import Via


@dataclass(frozen=True, slots=True)
class OurAddress:
    agent: str  # our FQDN, the agent named in Warning headers
    host: str  # in our Via and Record-Route: the FQDN, or server.advertised_host
    ports: dict[Transport, int]
    names: frozenset[str]  # hosts that mean us in a Request-URI or Route

    @classmethod
    def of(
        cls, config: Config, sip_port: int | None = None, tls_port: int | None = None
    ) -> OurAddress:
        server = config.server
        sip = server.sip_port if sip_port is None else sip_port
        tls = server.tls_port if tls_port is None else tls_port
        # Peers that cannot resolve our FQDN get an address instead (server.advertised_host).
        host = server.advertised_host or server.fqdn
        names = {server.fqdn, "localhost", host} | {
            a for a in server.addresses if not ipaddress.ip_address(a).is_unspecified
        }
        ports = {Transport.UDP: sip, Transport.TCP: sip, Transport.TLS: tls}
        return cls(server.fqdn, host, ports, frozenset(names))

    def with_ports(self, sip_port: int, tls_port: int) -> OurAddress:
        ports = {Transport.UDP: sip_port, Transport.TCP: sip_port, Transport.TLS: tls_port}
        return OurAddress(self.agent, self.host, ports, self.names)

    def hop(
        self,
        transport: Transport,
        peer: str | None = None,
        security: str | None = None,
        flow: int | None = None,
        host: str | None = None,
    ) -> proxy_ops.Hop:
        """`host`: where that leg reaches us when not at our FQDN (the sibling hop)."""
        port = self.ports[transport]
        return proxy_ops.Hop(host or self.host, port, transport, peer, security, flow)

    def also_named(self, host: str) -> OurAddress:
        return OurAddress(self.agent, self.host, self.ports, self.names | {host})

    def via(self, transport: Transport, branch: str, *, alias: bool = True) -> Via:
        params: dict[str, str | None] = {"branch": branch, "rport": None}
        if alias and transport.reliable:
            params["alias"] = None  # RFC 5923: this connection may carry requests back to us
        return Via(transport.upper(), self.host, self.ports[transport], params)

    def pinged(self, request: Request, flow: Flow) -> bool:
        """Whether an OPTIONS is for this hop: a Request-URI with one of our names, or with
        no user part (nothing could be routed on without a number)."""
        try:
            uri = parse_uri(request.uri)
        except UriError:
            return False
        return uri.user is None or uri.host in self.names or uri.host == flow.local[0]

    def is_ours(self, uri: SipUri) -> bool:
        return uri.host in self.names and (uri.port is None or uri.port in self.ports.values())
