"""Requests inside a dialog: they follow the Route set we recorded (§16.4, §16.12) back over
the same legs to the same peers, and a secured call's offers stay SRTP (our Record-Route
carries the dial plan's mode, so this needs no state)."""

from __future__ import annotations

from sipserver.config.schema import PeerSettings
from sipserver.proxy.forwarder import Forwarder
from sipserver.proxy.hops import OurAddress
from sipserver.proxy.responder import Responder
from sipserver.routing import router
from sipserver.routing.peers import PeerTable
from sipserver.sip import proxy_ops
from sipserver.sip.flow import Transmit
from sipserver.sip.message import Request
from sipserver.sip.transaction_machine import ServerTransaction


class DialogRouter:
    def __init__(self, responder: Responder, forwarder: Forwarder) -> None:
        self.responder = responder
        self.forwarder = forwarder

    def configure(self, peers: PeerTable, us: OurAddress) -> None:
        self.peers, self.us = peers, us

    def request(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        """A request inside a dialog: follow the Route set we recorded (§16.4, §16.12)."""
        request, hop, ours = proxy_ops.pop_our_routes(request, self.us.is_ours)
        if hop is None or not ours:
            return self.responder.answer(
                tx,
                404,
                "Not Found",
                now,
                headers=(self.responder.warning("In-dialog request without our Route"),),
                log_reason="in-dialog request without our Route",
            )
        tx.context.request = request
        why = router.in_dialog_media_problem(request, hop.security)
        if why is not None:
            refusal = "call_refused_insecure_media"
            return self.responder.refuse_media(tx, why, now, refusal, security=hop.security)
        first_hop = (hop, self._peer(hop))
        return self.forwarder.start_call(
            tx, request, None, (), now, first_hop=first_hop, security=hop.security
        )

    def ack(self, request: Request) -> list[Transmit]:
        """ACK for a 2xx: a new transaction-less request, relayed along the Route set."""
        to = request.to
        if to is None or not to.tag:
            return []
        request, hop, ours = proxy_ops.pop_our_routes(request, self.us.is_ours)
        if hop is None or not ours:
            return []
        return self.forwarder.forward_ack(request, hop, self._peer(hop))

    def _peer(self, hop: proxy_ops.NextHop) -> PeerSettings | None:
        """The allow-listed peer our popped Route named, if any."""
        return self.peers.by_name(hop.peer) if hop.peer else None
