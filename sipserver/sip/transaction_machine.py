"""RFC 3261 §17 transactions as data-driven state machines with explicit time.

Rule (after h11's _state.py): every state transition lives in a table
(transaction_tables.py). A transaction never reads a clock and never does I/O: callers
pass `now`, ask for `deadline`, call `handle_timer(now)` when it passes, and send what
comes back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sipserver.sip.errors import LocalProtocolError
from sipserver.sip.header_fields import KEY, make_header
from sipserver.sip.header_line import Header
from sipserver.sip.matching import client_key
from sipserver.sip.message import Headers, Request, Response
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_tables import (
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    SERVER_INVITE,
    SERVER_NON_INVITE,
    TIMER_ACTIONS,
    Action,
    Input,
    State,
    Table,
)

A: Final = Action  # as in the tables
I: Final = Input  # noqa: E741 -- as in the tables
# The members read on every message, as module constants (C statics when compiled): reading
# one off its class goes through EnumType.__getattr__, a hook even the compiled core pays.
_CALLING: Final = State.CALLING
_TRYING: Final = State.TRYING
_PROCEEDING: Final = State.PROCEEDING
_ACCEPTED: Final = State.ACCEPTED
_TERMINATED: Final = State.TERMINATED
_REQUEST: Final = Input.REQUEST
_ACK: Final = Input.ACK
_SEND_1XX: Final = Input.SEND_1XX
_SEND_2XX: Final = Input.SEND_2XX
_SEND_FINAL: Final = Input.SEND_FINAL
_RECV_1XX: Final = Input.RECV_1XX
_RECV_2XX: Final = Input.RECV_2XX
_RECV_FINAL: Final = Input.RECV_FINAL
_STOP_TIMERS: Final = Action.STOP_TIMERS
_START_INVITE_TIMERS: Final = (Action.START_A, Action.START_B)
_START_NON_INVITE_TIMERS: Final = (Action.START_E, Action.START_F)
# Timer names (the tables' "A".."M") to their inputs; calling the enum (Input("K")) runs
# interpreted code even in the compiled core.
_TIMER_INPUTS: Final[dict[str, Input]] = {i.value: i for i in Input if i.name.startswith("TIMER_")}
__all__ = ["State"]  # callers see the states through this module


# --- what a transaction hands back --------------------------------------------------
@dataclass(slots=True, unsafe_hash=True, init=False)
class SendMessage:
    """Bytes to put on the wire; `message` is set when they are a new message (not a
    retransmission of stored bytes). Immutable, as Via is."""

    data: Final[bytes]
    message: Final[Request | Response | None]

    def __init__(self, data: bytes, message: Request | Response | None = None) -> None:
        self.data = data
        self.message = message

    # Static, and the class named: a call through `cls` is a generic call in the compiled
    # core (arguments packed and parsed again), a named native class a direct one.
    @staticmethod
    def of(message: Request | Response) -> SendMessage:
        return SendMessage(message.to_bytes(), message)


@dataclass(slots=True, unsafe_hash=True, init=False)
class ResponseReceived:
    """Immutable, as Via is."""

    response: Final[Response]

    def __init__(self, response: Response) -> None:
        self.response = response


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """An ACK that matched an Accepted INVITE transaction, for the transaction user."""

    request: Request


@dataclass(frozen=True, slots=True)
class TimedOut:
    timer: str  # "B", "C", "F" or "H"


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Output = SendMessage | ResponseReceived | RequestReceived | TimedOut | Terminated


class InvalidTransition(LocalProtocolError):
    """The caller fed an input that the state machine does not accept in this state."""


_ids: Final = itertools.count(1)


@dataclass(eq=False, kw_only=True, init=False)
class Transaction:
    """The state machine. Server transactions keep no message objects, only the bytes of
    the last response, so the many that wait out Timer J or I cost little memory and
    nothing to the garbage collector."""

    reliable: bool
    timers: TimerValues
    table: Table
    state: State
    context: Any = None  # opaque to this module: the caller's flow/routing data
    # Not arguments of __init__ (so not of dataclasses.replace either): each starts afresh.
    id: int = field(init=False)
    last_response_data: bytes | None = field(init=False)
    last_status: int | None = field(init=False)
    scheduled: float | None = field(init=False)  # the deadline its owner last queued a wake-up for
    _deadlines: dict[str, float] = field(init=False)
    _intervals: dict[str, float] = field(init=False)

    # Written out, as Via's is: the generated one stays interpreted in the compiled core.
    def __init__(
        self,
        *,
        reliable: bool,
        timers: TimerValues,
        table: Table,
        state: State,
        context: Any = None,
    ) -> None:
        self.reliable = reliable
        self.timers = timers
        self.table = table
        self.state = state
        self.context = context
        self.id = next(_ids)
        self.last_response_data = None
        self.last_status = None
        self.scheduled = None
        self._deadlines = {}
        self._intervals = {}

    @property
    def deadline(self) -> float | None:
        earliest = None
        for due in self._deadlines.values():  # compiled: no call to min() per wake-up
            if earliest is None or due < earliest:
                earliest = due
        return earliest

    @property
    def terminated(self) -> bool:
        return self.state is _TERMINATED

    @property
    def accepted(self) -> bool:
        """RFC 6026's Accepted: an INVITE answered with a 2xx, waiting out its retransmissions."""
        return self.state is _ACCEPTED

    def abandon(self) -> None:
        """The transaction user gave up on it: no more timers, nothing more passed up."""
        self.state = _TERMINATED
        self._deadlines.clear()

    def handle_timer(self, now: float) -> list[Output]:
        """Fire every timer that is due, earliest first."""
        out: list[Output] = []
        while self._deadlines and not self.terminated:
            name, due = min(self._deadlines.items(), key=lambda item: item[1])
            if due > now:
                break
            del self._deadlines[name]
            out += self._apply(_TIMER_INPUTS[name], now)
        return out

    # --- the machine ---------------------------------------------------------------
    def _apply(
        self, event: Input, now: float, message: Request | Response | None = None
    ) -> list[Output]:
        key = (self.state, event)
        if key not in self.table:
            if not event.name.startswith("SEND_"):
                return []  # stray timers and messages in a state that ignores them
            raise InvalidTransition(f"{event.value} in state {self.state.value}")
        self.state, actions = self.table[key]
        out: list[Output] = []
        for action in actions:
            out += self._run(action, now, message, event)
        if self.state is _TERMINATED:
            self._deadlines.clear()
            out.append(Terminated())
        elif any(due <= now for due in self._deadlines.values()):
            # Timers of zero duration (D, I, J, K on reliable transports) fire at once.
            out += self.handle_timer(now)
        return out

    def _run(
        self, action: Action, now: float, message: Request | Response | None, event: Input
    ) -> list[Output]:
        handler = _ACTIONS.get(action)
        if handler is not None:
            return handler(self, message, event)
        if action is _STOP_TIMERS:
            self._deadlines.clear()
            return []
        starting, name = TIMER_ACTIONS[action]
        if starting:
            interval = self._initial_interval(name)
            if interval is not None:
                self._intervals[name] = interval
                self._deadlines[name] = now + interval
        else:
            interval = self._intervals[name] * 2
            if name in ("E", "G"):
                interval = min(interval, self.timers.t2)
            self._intervals[name] = interval
            self._deadlines[name] = now + interval
        return []

    def _initial_interval(self, name: str) -> float | None:
        """None means the timer does not run on this transport (§17, Table 4)."""
        t = self.timers
        retransmit = {"A": t.t1, "E": t.t1, "G": t.t1}
        if name in retransmit:
            return None if self.reliable else retransmit[name]
        if name in ("B", "F", "H", "L", "M"):
            return 64 * t.t1
        if name == "C":
            return t.timer_c
        if name == "D":
            return 0.0 if self.reliable else max(32.0, 64 * t.t1)
        if name in ("I", "K"):
            return 0.0 if self.reliable else t.t4
        if name == "J":
            return 0.0 if self.reliable else 64 * t.t1
        raise ValueError(name)


def _send(tx: Transaction, message: Request | Response | None, event: Input) -> list[Output]:
    assert isinstance(message, Response)
    out = SendMessage.of(message)
    tx.last_status = message.status
    # Accepted never resends on its own: no bytes kept for the 64*T1 it lasts.
    tx.last_response_data = None if tx.state is _ACCEPTED else out.data
    return [out]


def _resend_response(
    tx: Transaction, message: Request | Response | None, event: Input
) -> list[Output]:
    return [SendMessage(tx.last_response_data)] if tx.last_response_data is not None else []


def _resend_request(
    tx: Transaction, message: Request | Response | None, event: Input
) -> list[Output]:
    assert isinstance(tx, ClientTransaction)
    return [SendMessage(tx.request_data)]


def _send_ack(tx: Transaction, message: Request | Response | None, event: Input) -> list[Output]:
    assert isinstance(message, Response) and isinstance(tx, ClientTransaction)
    assert tx.request is not None, "a non-2xx final is ACKed before Accepted"
    return [SendMessage.of(build_ack_for_non_2xx(tx.request, message))]


def _pass_up(tx: Transaction, message: Request | Response | None, event: Input) -> list[Output]:
    if isinstance(message, Request):
        return [RequestReceived(message)]
    assert isinstance(message, Response)
    return [ResponseReceived(message)]


def _timeout(tx: Transaction, message: Request | Response | None, event: Input) -> list[Output]:
    return [TimedOut(event.value)]


_ACTIONS: Final[
    dict[Action, Callable[[Transaction, Request | Response | None, Input], list[Output]]]
] = {
    A.SEND: _send,
    A.RESEND_RESPONSE: _resend_response,
    A.RESEND_REQUEST: _resend_request,
    A.SEND_ACK: _send_ack,
    A.PASS_UP: _pass_up,
    A.TIMEOUT: _timeout,
}


def _response_input(status: int, sending: bool) -> Input:
    if status < 200:
        return _SEND_1XX if sending else _RECV_1XX
    if status < 300:
        return _SEND_2XX if sending else _RECV_2XX
    return _SEND_FINAL if sending else _RECV_FINAL


class ServerTransaction(Transaction):
    @staticmethod  # as SendMessage.of
    def create(
        method: str,
        *,
        reliable: bool,
        now: float,
        timers: TimerValues = TimerValues(),
        context: Any = None,
    ) -> ServerTransaction:
        """A server transaction for a new request with this method. The request itself
        stays with the caller, who needs it only until the final response."""
        if method == "INVITE":
            return ServerTransaction(
                reliable=reliable,
                timers=timers,
                table=SERVER_INVITE,
                state=_PROCEEDING,
                context=context,
            )
        return ServerTransaction(
            reliable=reliable,
            timers=timers,
            table=SERVER_NON_INVITE,
            state=_TRYING,
            context=context,
        )

    def receive_request(self, request: Request, now: float) -> list[Output]:
        """A retransmission of our request, or the ACK for a non-2xx final response."""
        return self._apply(_ACK if request.method == "ACK" else _REQUEST, now, request)

    def send_response(self, response: Response, now: float) -> list[Output]:
        return self._apply(_response_input(response.status, sending=True), now, response)


@dataclass(eq=False, kw_only=True, init=False)
class ClientTransaction(Transaction):
    key: tuple[str, str]  # what responses are matched on (§17.1.3)
    # The request, and its bytes for Timer A/E retransmissions; both let go in Accepted,
    # where nothing is resent or ACKed, so the 64*T1 that state lasts costs little.
    request: Request | None
    request_data: bytes

    def __init__(
        self,
        *,
        reliable: bool,
        timers: TimerValues,
        table: Table,
        state: State,
        key: tuple[str, str],
        request: Request | None,
        request_data: bytes,
        context: Any = None,
    ) -> None:
        Transaction.__init__(
            self, reliable=reliable, timers=timers, table=table, state=state, context=context
        )
        self.key = key
        self.request = request
        self.request_data = request_data

    @staticmethod  # as SendMessage.of
    def create(
        request: Request,
        *,
        reliable: bool,
        now: float,
        timers: TimerValues = TimerValues(),
        context: Any = None,
    ) -> tuple[ClientTransaction, list[Output]]:
        """Create the transaction and return what to send first (the request)."""
        first = SendMessage.of(request)
        invite = request.method == "INVITE"
        tx = ClientTransaction(
            reliable=reliable,
            timers=timers,
            context=context,
            key=client_key(request),
            request=request,
            request_data=first.data,
            table=CLIENT_INVITE if invite else CLIENT_NON_INVITE,
            state=_CALLING if invite else _TRYING,
        )
        for action in _START_INVITE_TIMERS if invite else _START_NON_INVITE_TIMERS:
            tx._run(action, now, None, _REQUEST)
        return tx, [first]

    def receive_response(self, response: Response, now: float) -> list[Output]:
        out = self._apply(_response_input(response.status, sending=False), now, response)
        if self.state in (_ACCEPTED, _TERMINATED):
            self.request, self.request_data = None, b""
        return out


def build_ack_for_non_2xx(request: Request, response: Response) -> Request:
    """§17.1.1.3: same Request-URI, Call-ID, From, top Via and Route as the INVITE; To
    from the response (with its tag); CSeq number of the INVITE with method ACK."""
    number, _ = request.cseq
    items: list[Header] = []
    vias = request.headers.get_all("Via")
    items.append(make_header("Via", vias[0]))
    for header in request.headers:
        if header[KEY] in ("from", "call-id", "route", "max-forwards"):
            items.append(header)
    to_value = response.headers.get("To") or request.headers.get("To") or ""
    items.append(make_header("To", to_value))
    items.append(make_header("CSeq", f"{number} ACK"))
    return Request(Headers(items), b"", method="ACK", uri=request.uri)
