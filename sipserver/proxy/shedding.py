"""Load shedding: while the shell says the server cannot keep up, a share of new calls
is refused at once with 503 and Retry-After (RFC 3261 §21.5.4), so that the calls already
admitted keep the CPU they need."""

from __future__ import annotations

from sipserver.proxy.answers import Responder
from sipserver.proxy.calls import CallRecord
from sipserver.proxy.events import CallShed
from sipserver.sip.flow import Transmit
from sipserver.sip.transaction import ServerTransaction


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
        return self.responder.unavailable(tx, "Server overloaded", retry_after, now, CallShed)
