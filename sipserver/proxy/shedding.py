"""Load shedding: while the shell says the server cannot keep up, a share of new calls
is refused at once with 503 and Retry-After (RFC 3261 §21.5.4), so that the calls already
admitted keep the CPU they need."""

from __future__ import annotations

from sipserver import SERVER_NAME
from sipserver.proxy.answers import Responder
from sipserver.proxy.calls import CallRecord
from sipserver.proxy.events import CallShed
from sipserver.settings import PeerSettings
from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.stateless import read_new_invite, refusal
from sipserver.sip.transaction import ServerTransaction

OVERLOADED = "Server overloaded"


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

    def sheds(self, method: str, in_dialog: bool) -> bool:
        """Whether this request is a new call to refuse now."""
        if not self.overloaded or in_dialog or method != "INVITE":
            return False
        if self.surge:
            return True
        self._credit += self.ratio
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

    def refuse(self, tx: ServerTransaction, retry_after: int, now: float) -> list[Transmit]:
        self.shed += 1
        self.record.count(None, "shed_503")
        return self.responder.unavailable(tx, OVERLOADED, retry_after, now, CallShed)

    def refuse_at_door(
        self, data: bytes, flow: Flow, peer: PeerSettings, retry_after: int
    ) -> list[Transmit] | None:
        """During a surge, a new call on a connection is refused from its bytes, with no
        parse and no transaction (a stream needs no retransmission, and the ACK is known
        by our To-tag): the cheaper a refusal, the sooner the queue behind it is served.
        None: not a new INVITE this way can answer; the full path decides."""
        invite = read_new_invite(data)
        if invite is None:
            return None
        headers = (
            ("Retry-After", str(retry_after)),
            self.responder.warning(OVERLOADED),
            ("Server", SERVER_NAME),
        )
        response = refusal(invite, flow.remote, b"SIP/2.0 503 Service Unavailable", headers)
        if response is None:
            return None
        self.shed += 1
        self.record.count(None, "shed_503")
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
