"""Every live transaction, by key, and one heap of their deadlines. The core asks it when
to wake next and which transactions are due; it never decides what a timeout means."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass

from sipserver.config.schema import PeerSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.wakeups import WakeUps
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import Flow
from sipserver.sip.matching import client_key
from sipserver.sip.message import Request, Response
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    ServerTransaction,
    State,
    Transaction,
)
from sipserver.sip.transaction_tables import SERVER_NON_INVITE


@dataclass(frozen=True, slots=True)
class SettledAnswer:
    """What is left of a non-INVITE UDP server transaction once it has answered: Timer J
    keeps it 64*T1 only to answer retransmissions, which need these bytes and no more."""

    data: bytes
    reply_to: Flow


@dataclass(slots=True, init=False)
class ServerContext:
    """What the core keeps with each server transaction. The request is let go once the
    final response is sent: retransmissions only need the response bytes."""

    key: tuple[str, ...]
    flow: Flow  # where the request came from
    reply_to: Flow  # where responses go (§18.2.2), worked out once
    peer: PeerSettings | None
    method: str
    call_id: str | None
    request: Request | None
    peer_cert: CertInfo | None

    # Written out, as Via's is: the generated one stays interpreted in the compiled core.
    def __init__(
        self,
        key: tuple[str, ...],
        flow: Flow,
        reply_to: Flow,
        peer: PeerSettings | None,
        method: str,
        call_id: str | None,
        request: Request | None,
        peer_cert: CertInfo | None = None,
    ) -> None:
        self.key = key
        self.flow = flow
        self.reply_to = reply_to
        self.peer = peer
        self.method = method
        self.call_id = call_id
        self.request = request
        self.peer_cert = peer_cert


class TransactionTable:
    def __init__(self) -> None:
        self.server: dict[tuple[str, ...], ServerTransaction] = {}
        self.client: dict[tuple[str, str], ClientTransaction] = {}
        # The same transactions by the flow they went out on: a closing connection asks for
        # its own, and thousands of INVITEs wait out Timer M on other flows.
        self._client_on: dict[Flow, dict[tuple[str, str], ClientTransaction]] = {}
        self.settled: dict[tuple[str, ...], SettledAnswer] = {}
        self._settled_expiry: collections.deque[tuple[float, tuple[str, ...]]] = collections.deque()
        self.wakeups: WakeUps[Transaction] = WakeUps(
            lambda tx: not tx.terminated, lambda: len(self.server) + len(self.client)
        )

    def add_client(self, tx: ClientTransaction) -> None:
        previous = self.client.get(tx.key)
        if previous is not None:
            self.forget_client(previous)
        self.client[tx.key] = tx
        self._client_on.setdefault(tx.context.flow, {})[tx.key] = tx

    def client_for(self, response: Response) -> ClientTransaction | None:
        """The client transaction a response belongs to (§17.1.3), if any."""
        try:
            return self.client.get(client_key(response))
        except RemoteProtocolError:
            return None

    def forget_client(self, tx: ClientTransaction) -> None:
        if self.client.get(tx.key) is not tx:
            return
        del self.client[tx.key]
        on_flow = self._client_on[tx.context.flow]
        del on_flow[tx.key]
        if not on_flow:
            del self._client_on[tx.context.flow]

    def clients_on(self, flow: Flow) -> list[ClientTransaction]:
        on_flow = self._client_on.get(flow)
        if not on_flow:
            return []
        return [t for t in on_flow.values() if not t.terminated]

    def schedule(self, tx: Transaction) -> None:
        self.wakeups.schedule(tx)

    def settle(self, tx: ServerTransaction) -> bool:
        """Swap a non-INVITE UDP transaction that has answered (and waits out Timer J) for
        its SettledAnswer; False when the transaction is not one of those."""
        if (
            tx.state is not State.COMPLETED
            or tx.table is not SERVER_NON_INVITE
            or tx.reliable
            or tx.deadline is None
            or tx.last_response_data is None
        ):
            return False
        context: ServerContext = tx.context
        if self.server.get(context.key) is tx:
            del self.server[context.key]
        self.settled[context.key] = SettledAnswer(tx.last_response_data, context.reply_to)
        self._settled_expiry.append((tx.deadline, context.key))
        return True

    def forget_settled(self, now: float) -> None:
        """Timer J for the settled answers whose time is up (they expire in the order they
        were settled: Timer J is the same for all, unless a reload changed T1)."""
        while self._settled_expiry and self._settled_expiry[0][0] <= now:
            self.settled.pop(self._settled_expiry.popleft()[1], None)

    def next_deadline(self) -> float | None:
        pending = self.wakeups.next_deadline()
        if not self._settled_expiry:
            return pending
        first = self._settled_expiry[0][0]
        return first if pending is None else min(first, pending)

    def due(self, now: float) -> Iterator[Transaction]:
        """The transactions whose deadline has passed, each once, earliest first."""
        return self.wakeups.due(now)

    def pending_server(self) -> int:
        """Server transactions still waiting for their final response."""
        return sum(1 for tx in self.server.values() if tx.state in (State.TRYING, State.PROCEEDING))
