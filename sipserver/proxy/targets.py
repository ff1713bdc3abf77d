"""Where a proxied call's next attempt goes: the dial plan's targets in order, skipping
those health checks marked down; a connection already open to the target; its single
configured address; else the addresses DNS gives for its FQDN (RFC 3263), each one more
failover step. A target not located yet parks the call until the shell's lookup is
answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sipserver.config.schema import SIBLING_NAME, PeerSettings
from sipserver.proxy.calls import ProxyCall
from sipserver.proxy.connection_directory import ConnectionDirectory, target_flow
from sipserver.proxy.events import AttemptFailed, Event
from sipserver.proxy.locations import Locations, Lookup
from sipserver.proxy.registrar import Registrar
from sipserver.routing.target_health import HealthTable
from sipserver.sip import proxy_ops
from sipserver.sip.flow import Flow, Transport


@dataclass(slots=True, unsafe_hash=True, init=False)
class Attempt:
    """Immutable, as Via is (see there why the fields are Final and __init__ written out)."""

    target: Final[PeerSettings]
    transport: Final[Transport]
    uri: Final[str]  # the Request-URI
    flow: Final[Flow]

    def __init__(self, target: PeerSettings, transport: Transport, uri: str, flow: Flow) -> None:
        self.target = target
        self.transport = transport
        self.uri = uri
        self.flow = flow


class Waiting:
    """The call waits for a lookup."""


WAITING: Final = Waiting()


class TargetPicker:
    def __init__(
        self,
        connections: ConnectionDirectory,
        events: list[Event],
        health: HealthTable,
        registrar: Registrar,
    ) -> None:
        self.connections = connections
        self.registrar = registrar
        self.events = events
        self.health = health
        self.locations: Locations[ProxyCall] = Locations()

    def next(self, call: ProxyCall, now: float) -> Attempt | Waiting | None:
        """The next attempt, WAITING, or None once every target is used up."""
        while call.hops or call.targets:
            if call.hops:
                target, host, port = call.hops.pop(0)
                transport = transport_to(call, target)
                uri = proxy_ops.retarget(call.request.uri, target.fqdn, target.port, transport)
                call.located = True
                flow = Flow(transport, ("", 0), (host, port), None, server_name=target.fqdn)
                return Attempt(target, transport, uri, flow)
            target = call.targets.pop(0)
            if not self.health.is_up(target):
                call.attempts.append(f"{target.name}: down")
                continue
            transport = transport_to(call, target)
            direct = target_flow(self.connections, target, transport)
            if direct is None:
                lookup = Lookup(target.fqdn, transport, target.send_port)
                located = self.locations.get(lookup, now)
                if located is None:
                    call.targets.insert(0, target)
                    self.locations.wait(lookup, call)
                    return WAITING
                if located.error is not None:
                    note_failure(self.events, call, target.name, located.error)
                call.hops = [(target, host, port) for host, port in located.destinations]
                continue
            call.located = False
            uri = proxy_ops.retarget(call.request.uri, target.fqdn, target.send_port, transport)
            return Attempt(target, transport, uri, direct)
        return None

    def in_dialog_flow(self, hop: proxy_ops.NextHop, peer: PeerSettings | None) -> Flow | None:
        """Where an in-dialog request goes: an open connection to the peer our Route named,
        else the URI's address (TLS: allow-listed peers only). A softphone is reached over
        a flow it opened (RFC 5626): the one our Record-Route names, else one it registered
        or holds open; over UDP, else its Contact."""
        transport = hop.transport
        if peer is not None and peer.name == SIBLING_NAME:
            # Another process of ours, at the address its Record-Route gave: one connection
            # per process, never "any connection to a sibling".
            port = hop.uri.port or 5061
            return Flow(Transport.TLS, ("", 0), (hop.uri.host, port), None, server_name=peer.fqdn)
        if peer is not None and peer.is_softphone:
            flow = self.connections.flow_of(hop.flow) if hop.flow is not None else None
            flow = flow or self.registrar.flow_to(peer.name, transport)
            flow = flow or self.connections.flow_to(peer.name, transport)
            if flow is not None or transport.reliable:
                return flow
        reuse = self.connections.flow_to(peer.name, transport) if peer is not None else None
        if reuse is not None and transport.reliable:
            return reuse
        if transport == Transport.TLS and peer is None:
            return None
        port = hop.uri.port or (5061 if transport == Transport.TLS else 5060)
        server_name = peer.fqdn if peer else None
        return Flow(transport, ("", 0), (hop.uri.host, port), None, server_name=server_name)


def transport_to(call: ProxyCall, target: PeerSettings) -> Transport:
    return Transport.TLS if call.plan and call.plan.requires_tls else target.transport


def note_failure(events: list[Event], call: ProxyCall, name: str, reason: str) -> None:
    """An attempt that failed: in the call's Warning and as a log event."""
    call.attempts.append(f"{name}: {reason}")
    events.append(
        AttemptFailed(
            call_id=call.request.call_id,
            target=name,
            reason=reason,
            attempt=call.attempt,
            dial_plan=call.plan.name if call.plan else None,
        )
    )
