"""OPTIONS pings to dial-plan targets (as Teams Direct Routing and most SBCs expect), one
at a time per target, every `health_check` seconds. Its deadlines join the core's, so the
shell has no polling loop: it sleeps until `next_deadline()`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from sipserver.config.schema import Config, PeerSettings
from sipserver.proxy.calls import ClientContext, ProxyCall
from sipserver.proxy.connection_directory import ConnectionDirectory, target_flow
from sipserver.proxy.events import Event, TargetHealthChanged, TargetHealthChecked
from sipserver.proxy.hops import OurAddress
from sipserver.proxy.live_transactions import TransactionTable
from sipserver.proxy.locations import Locations, Lookup
from sipserver.routing.target_health import HealthTable
from sipserver.sip import proxy_ops
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    Output,
    ResponseReceived,
    SendMessage,
    Terminated,
    TimedOut,
)


def _same_place(old: PeerSettings, new: PeerSettings) -> bool:
    """Whether what a health check found about `old` still says something about `new`."""
    return (old.fqdn, old.addresses, old.send_port, old.transport) == (
        new.fqdn,
        new.addresses,
        new.send_port,
        new.transport,
    )


class HealthChecker:
    def __init__(
        self,
        table: TransactionTable,
        events: list[Event],
        connections: ConnectionDirectory,
        locations: Locations[ProxyCall],
    ) -> None:
        self.table = table
        self.locations = locations
        self.connections = connections
        self.events = events
        self.health = HealthTable(1)
        self.targets: tuple[PeerSettings, ...] = ()
        self.next_ping: dict[str, float] = {}
        self.pinging: set[str] = set()
        self._numbers = itertools.count(1)

    def configure(self, config: Config, us: OurAddress, timers: TimerValues) -> None:
        """Targets checked as before keep their state and schedule. A target whose checks
        are now off is up; one whose address, port or transport changed (or that is new)
        starts fresh and is pinged at once."""
        previous, before = self.health, {p.name: p for p in self.targets}
        self.health = HealthTable(config.routing.down_after_failures)
        self.us, self.timers = us, timers
        target_names = {name for plan in config.dial_plans for name in plan.targets}
        self.targets = tuple(
            p
            for p in config.peers
            if p.name in target_names and p.health_check > 0 and not p.is_softphone
        )
        checked = {p.name: p for p in self.targets}
        keep = {
            name for name, p in checked.items() if name in before and _same_place(before[name], p)
        }
        self.health.carry_over(previous, keep)
        for tx in list(self.table.client.values()):
            peer = tx.context.peer
            if tx.context.kind == "health" and peer is not None and peer.name not in keep:
                tx.abandon()  # its answer would say nothing about the target as it is now
                self.table.forget_client(tx)
                self.pinging.discard(peer.name)
        for name, state in previous.snapshot().items():
            if name in keep:
                continue
            self.next_ping.pop(name, None)
            if not state.up:
                why = (
                    "its address, port or transport changed"
                    if name in checked
                    else "its health checks are off"
                )
                self.events.append(
                    TargetHealthChanged(
                        target=name,
                        target_fqdn=before[name].fqdn if name in before else "",
                        state="up",
                        reason=f"configuration reloaded: {why}",
                    )
                )

    def next_deadline(self) -> float | None:
        due = [
            self.next_ping.get(peer.name, float("-inf"))
            for peer in self.targets
            if peer.name not in self.pinging
        ]
        return min(due) if due else None

    def due(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for peer in self.targets:
            if peer.name in self.pinging or self.next_ping.get(peer.name, now) > now:
                continue
            self.next_ping[peer.name] = now + peer.health_check
            out += self._ping(peer, now)
        return out

    def _ping(self, peer: PeerSettings, now: float) -> list[Transmit]:
        transport = peer.transport
        flow = self._where(peer, transport, now)
        if flow is None:
            return []
        number = next(self._numbers)
        our = self.us.hop(transport)
        uri = f"sip:{peer.fqdn}:{peer.send_port}" + (
            "" if transport == Transport.UDP else f";transport={transport}"
        )
        request = proxy_ops.build_options(
            uri,
            peer.fqdn,
            our,
            f"{proxy_ops.BRANCH_PREFIX}hc{number}x{int(now * 1000)}",
            f"health-{number}-{peer.name}@{our.host}",
            number,
        )
        tx, first = ClientTransaction.create(
            request,
            reliable=transport.reliable,
            now=now,
            timers=self.timers,
            context=ClientContext(None, flow, "health", peer),
        )
        self.pinging.add(peer.name)
        self.table.add_client(tx)
        return self.drive(tx, first)

    def _where(self, peer: PeerSettings, transport: Transport, now: float) -> Flow | None:
        """Where to ping: as a call would go, or the first address DNS gave. None while it
        is looked up (the ping is tried again in a second) or when the lookup failed."""
        flow = target_flow(self.connections, peer, transport)
        if flow is not None:
            return flow
        lookup = Lookup(peer.fqdn, transport, peer.send_port)
        located = self.locations.get(lookup, now)
        if located is None:
            self.locations.prefetch(lookup)
            self.next_ping[peer.name] = now + min(1.0, peer.health_check)
            return None
        if located.error is not None:
            self._result(peer, False, located.error)
            return None
        host, port = located.destinations[0]
        return Flow(transport, ("", 0), (host, port), None, server_name=peer.fqdn)

    def drive(self, tx: ClientTransaction, outputs: Sequence[Output]) -> list[Transmit]:
        context: ClientContext = tx.context
        peer = context.peer
        assert peer is not None
        out: list[Transmit] = []
        for item in outputs:
            if isinstance(item, SendMessage):
                out.append(Transmit(context.flow, item.data))
            elif isinstance(item, ResponseReceived) and item.response.status >= 200:
                status = item.response.status
                self._result(peer, status < 500, f"{status} {item.response.reason}")
            elif isinstance(item, TimedOut):
                self._result(peer, False, "timeout")
            elif isinstance(item, Terminated):
                self.table.forget_client(tx)
        self.table.schedule(tx)
        return out

    def transport_failed(self, flow: Flow, reason: str) -> None:
        for tx in self.table.clients_on(flow):
            if tx.context.kind == "health" and tx.context.peer is not None:
                self.table.forget_client(tx)
                self._result(tx.context.peer, False, reason)

    def _result(self, peer: PeerSettings, ok: bool, reason: str) -> None:
        self.pinging.discard(peer.name)
        changed = self.health.record(peer, ok, reason)
        if changed is None:
            self.events.append(TargetHealthChecked(target=peer.name, ok=ok, reason=reason))
            return
        self.events.append(
            TargetHealthChanged(
                target=peer.name,
                target_fqdn=peer.fqdn,
                state="up" if changed else "down",
                reason=reason,
            )
        )
