"""Load shedding: while the shell says the server cannot keep up, a share of new calls
is refused at once with 503 and Retry-After (RFC 3261 §21.5.4), so that the calls already
admitted keep the CPU they need."""

from __future__ import annotations

from typing import Final

from sipserver.config.schema import PeerSettings
from sipserver.proxy.calls import CallRecord
from sipserver.proxy.events import CallShed
from sipserver.proxy.responder import Responder
from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.stateless import read_new_invite, refusal
from sipserver.sip.transaction_machine import ServerTransaction

OVERLOADED: Final = "Server overloaded"


class LoadShedder:
    def __init__(self, responder: Responder, record: CallRecord) -> None:
        self.responder = responder
        self.record = record
        self.overloaded = False  # set by the shell while it cannot keep up
        self.ratio = 0.0  # the share of new calls refused while overloaded
        # Set while the message being handled has a backlog behind it: every new call is
        # refused until the backlog is down, so that the queue (and the wait for a 503)
        # stays short while the share settles.
        self.surge = False
        self._credit = 0.0
        self.shed = 0  # calls refused because of overload, since start

    def set(self, overloaded: bool, ratio: float = 1.0) -> None:
        """While overloaded, refuse `ratio` of new calls (spread evenly) with 503."""
        self.overloaded = overloaded
        self.ratio = min(1.0, max(0.0, ratio)) if overloaded else 0.0
        self.surge = self.surge and overloaded

    def would_shed(self, method: str, in_dialog: bool) -> bool:
        """Whether sheds() would refuse this request, without taking the decision."""
        if not self.overloaded or in_dialog or method != "INVITE":
            return False
        return self.surge or self._credit + self.ratio >= 1.0

    def sheds(self, method: str, in_dialog: bool) -> bool:
        """Whether this request is a new call to refuse now (the share's turn is taken)."""
        if not self.overloaded or in_dialog or method != "INVITE":
            return False
        if self.surge:
            return True
        shed = self._credit + self.ratio >= 1.0  # as would_shed() says
        self._credit = self._credit + self.ratio - (1.0 if shed else 0.0)
        return shed

    def refuse(self, tx: ServerTransaction, retry_after: int, now: float) -> list[Transmit]:
        self.shed += 1
        self.record.count(None, "shed_503", tx.context.peer)
        return self.responder.unavailable(tx, OVERLOADED, retry_after, now, CallShed)

    def refuse_at_door(
        self, data: bytes, flow: Flow, peer: PeerSettings, retry_after: int
    ) -> list[Transmit] | None:
        """A new call on a connection that is to be shed is refused from its bytes, with no
        parse and no transaction (a stream needs no retransmission, and the ACK is known by
        our To-tag): the cheaper a refusal, the sooner the queue behind it is served.
        None: not one this way can answer (the full path decides, as it would have)."""
        if not self.would_shed("INVITE", in_dialog=False):
            return None
        invite = read_new_invite(data)
        if invite is None:
            return None
        headers = (
            ("Retry-After", str(retry_after)),
            self.responder.warning(OVERLOADED),
            *((("Server", self.responder.server_header),) if self.responder.server_header else ()),
        )
        response = refusal(invite, flow.remote, b"SIP/2.0 503 Service Unavailable", headers)
        if response is None:
            return None
        self.sheds("INVITE", in_dialog=False)  # the share's turn is taken here
        self.shed += 1
        self.record.count(None, "shed_503", peer)
        self.responder.events.append(
            CallShed(
                call_id=invite.call_id.decode("utf-8", "replace"),
                method="INVITE",
                status=503,
                reason=OVERLOADED.lower(),
                transport=flow.transport,
                remote=flow.remote_text,
                peer=peer.name,
                peer_fqdn=peer.fqdn,
            )
        )
        return [Transmit(flow, response)]
