"""Every live transaction, by key, and one heap of their deadlines. The core asks it when
to wake next and which transactions are due; it never decides what a timeout means."""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from sipserver.pki.certinfo import CertInfo
from sipserver.settings import PeerSettings
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import Flow
from sipserver.sip.matching import client_key
from sipserver.sip.message import Request, Response
from sipserver.sip.transaction import ClientTransaction, ServerTransaction, State, Transaction
from sipserver.sip.transaction_tables import SERVER_NON_INVITE


@dataclass(frozen=True, slots=True)
class SettledAnswer:
    """What is left of a non-INVITE UDP server transaction once it has answered: Timer J
    keeps it 64*T1 only to answer retransmissions, which need these bytes and no more."""

    data: bytes
    reply_to: Flow


@dataclass(slots=True)
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
    peer_cert: CertInfo | None = None


class TransactionTable:
    def __init__(self) -> None:
        self.server: dict[tuple[str, ...], ServerTransaction] = {}
        self.client: dict[tuple[str, str], ClientTransaction] = {}
        self.settled: dict[tuple[str, ...], SettledAnswer] = {}
        self._settled_expiry: collections.deque[tuple[float, tuple[str, ...]]] = collections.deque()
        self._deadlines: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()

    def add_client(self, tx: ClientTransaction) -> None:
        self.client[tx.key] = tx

    def client_for(self, response: Response) -> ClientTransaction | None:
        """The client transaction a response belongs to (§17.1.3), if any."""
        try:
            return self.client.get(client_key(response))
        except RemoteProtocolError:
            return None

    def forget_client(self, tx: ClientTransaction) -> None:
        if self.client.get(tx.key) is tx:
            del self.client[tx.key]

    def clients_on(self, flow: Flow) -> list[ClientTransaction]:
        return [t for t in self.client.values() if not t.terminated and t.context.flow == flow]

    def schedule(self, tx: Transaction) -> None:
        deadline = tx.deadline
        if tx.terminated or deadline is None or deadline == tx.scheduled:
            return
        tx.scheduled = deadline
        heapq.heappush(self._deadlines, (deadline, next(self._seq), tx))
        if len(self._deadlines) > 2 * (len(self.server) + len(self.client)) + 1024:
            self._compact()

    def _compact(self) -> None:
        """Drop the entries of ended transactions and of deadlines that moved. Left in the
        heap they would keep every call they reach alive until their old deadline passed
        (Timer C's is three minutes away)."""
        self._deadlines = [
            entry
            for entry in self._deadlines
            if not entry[2].terminated and entry[2].deadline == entry[0]
        ]
        heapq.heapify(self._deadlines)

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
        if self._settled_expiry:
            first = self._settled_expiry[0][0]
            pending = self._next_transaction_deadline()
            return first if pending is None else min(first, pending)
        return self._next_transaction_deadline()

    def _next_transaction_deadline(self) -> float | None:
        while self._deadlines:
            if not self._current(self._deadlines[0]):
                heapq.heappop(self._deadlines)
                continue
            return self._deadlines[0][0]
        return None

    def due(self, now: float) -> Iterator[Transaction]:
        """The transactions whose deadline has passed, each once, earliest first."""
        while self._deadlines and self._deadlines[0][0] <= now:
            entry = heapq.heappop(self._deadlines)
            if self._current(entry):
                entry[2].scheduled = None
                yield entry[2]

    @staticmethod
    def _current(entry: tuple[float, int, Transaction]) -> bool:
        due, _, tx = entry
        return not tx.terminated and tx.deadline == due and tx.scheduled == due

    def pending_server(self) -> int:
        """Server transactions still waiting for their final response."""
        return sum(1 for tx in self.server.values() if tx.state in (State.TRYING, State.PROCEEDING))
