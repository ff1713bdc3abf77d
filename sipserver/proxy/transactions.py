"""Every live transaction, by key, and one heap of their deadlines. The core asks it when
to wake next and which transactions are due; it never decides what a timeout means."""

from __future__ import annotations

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
        self._deadlines: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()

    def add_client(self, tx: ClientTransaction) -> None:
        self.client[client_key(tx.request)] = tx

    def client_for(self, response: Response) -> ClientTransaction | None:
        """The client transaction a response belongs to (§17.1.3), if any."""
        try:
            return self.client.get(client_key(response))
        except RemoteProtocolError:
            return None

    def forget_client(self, tx: ClientTransaction) -> None:
        key = client_key(tx.request)
        if self.client.get(key) is tx:
            del self.client[key]

    def clients_on(self, flow: Flow) -> list[ClientTransaction]:
        return [t for t in self.client.values() if t.context.flow == flow and not t.terminated]

    def schedule(self, tx: Transaction) -> None:
        if not tx.terminated and tx.deadline is not None:
            heapq.heappush(self._deadlines, (tx.deadline, next(self._seq), tx))

    def next_deadline(self) -> float | None:
        while self._deadlines:
            due, _, tx = self._deadlines[0]
            if tx.terminated or tx.deadline != due:
                heapq.heappop(self._deadlines)
                continue
            return due
        return None

    def due(self, now: float) -> Iterator[Transaction]:
        """The transactions whose deadline has passed, each once, earliest first."""
        while self._deadlines and self._deadlines[0][0] <= now:
            due, _, tx = heapq.heappop(self._deadlines)
            if not tx.terminated and tx.deadline == due:
                yield tx

    def pending_server(self) -> int:
        """Server transactions still waiting for their final response."""
        return sum(1 for tx in self.server.values() if tx.state in (State.TRYING, State.PROCEEDING))
