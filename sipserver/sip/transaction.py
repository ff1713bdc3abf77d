"""RFC 3261 §17 transactions as data-driven state machines with explicit time.

Rule (after h11's _state.py): every state transition lives in the tables below. A
transaction never reads a clock and never does I/O: callers pass `now`, ask for
`deadline`, call `handle_timer(now)` when it passes, and send what comes back.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipserver.sip.errors import LocalProtocolError
from sipserver.sip.message import Header, Headers, Request, Response
from sipserver.sip.timers import TimerValues


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Input(enum.Enum):
    REQUEST = "request"  # a retransmission of the transaction's request
    ACK = "ack"
    SEND_1XX = "send_1xx"
    SEND_2XX = "send_2xx"
    SEND_FINAL = "send_3xx_6xx"
    RECV_1XX = "recv_1xx"
    RECV_2XX = "recv_2xx"
    RECV_FINAL = "recv_3xx_6xx"
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_C = "C"
    TIMER_D = "D"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_J = "J"
    TIMER_K = "K"


class Action(enum.Enum):
    SEND = "send"  # send the response given with the input
    RESEND_RESPONSE = "resend_response"
    RESEND_REQUEST = "resend_request"
    SEND_ACK = "send_ack"
    PASS_UP = "pass_up"  # give the received response to the transaction user
    TIMEOUT = "timeout"  # tell the transaction user the transaction timed out
    START_A = "start_A"
    START_B = "start_B"
    START_C = "start_C"
    START_D = "start_D"
    START_E = "start_E"
    START_F = "start_F"
    START_G = "start_G"
    START_H = "start_H"
    START_I = "start_I"
    START_J = "start_J"
    START_K = "start_K"
    BACKOFF_A = "backoff_A"
    BACKOFF_E = "backoff_E"
    BACKOFF_G = "backoff_G"
    STOP_TIMERS = "stop_timers"


S, I, A = State, Input, Action  # noqa: E741 -- short names keep the tables readable
# START_x and BACKOFF_x actions: (starting?, timer name), worked out once.
_TIMER_ACTIONS = {
    action: (action.name.startswith("START_"), action.value[-1])
    for action in Action
    if action.name.startswith(("START_", "BACKOFF_"))
}
Table = dict[tuple[State, Input], tuple[State, tuple[Action, ...]]]

SERVER_INVITE: Table = {
    (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (A.RESEND_RESPONSE,)),
    (S.PROCEEDING, I.SEND_1XX): (S.PROCEEDING, (A.SEND,)),
    (S.PROCEEDING, I.SEND_2XX): (S.TERMINATED, (A.SEND,)),
    (S.PROCEEDING, I.SEND_FINAL): (S.COMPLETED, (A.SEND, A.START_G, A.START_H)),
    (S.COMPLETED, I.REQUEST): (S.COMPLETED, (A.RESEND_RESPONSE,)),
    (S.COMPLETED, I.TIMER_G): (S.COMPLETED, (A.RESEND_RESPONSE, A.BACKOFF_G)),
    (S.COMPLETED, I.TIMER_H): (S.TERMINATED, (A.STOP_TIMERS, A.TIMEOUT)),
    (S.COMPLETED, I.ACK): (S.CONFIRMED, (A.STOP_TIMERS, A.START_I)),
    (S.CONFIRMED, I.ACK): (S.CONFIRMED, ()),
    (S.CONFIRMED, I.REQUEST): (S.CONFIRMED, ()),
    (S.CONFIRMED, I.TIMER_I): (S.TERMINATED, ()),
}

SERVER_NON_INVITE: Table = {
    (S.TRYING, I.REQUEST): (S.TRYING, ()),
    (S.TRYING, I.SEND_1XX): (S.PROCEEDING, (A.SEND,)),
    (S.TRYING, I.SEND_2XX): (S.COMPLETED, (A.SEND, A.START_J)),
    (S.TRYING, I.SEND_FINAL): (S.COMPLETED, (A.SEND, A.START_J)),
    (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (A.RESEND_RESPONSE,)),
    (S.PROCEEDING, I.SEND_1XX): (S.PROCEEDING, (A.SEND,)),
    (S.PROCEEDING, I.SEND_2XX): (S.COMPLETED, (A.SEND, A.START_J)),
    (S.PROCEEDING, I.SEND_FINAL): (S.COMPLETED, (A.SEND, A.START_J)),
    (S.COMPLETED, I.REQUEST): (S.COMPLETED, (A.RESEND_RESPONSE,)),
    (S.COMPLETED, I.TIMER_J): (S.TERMINATED, ()),
}

CLIENT_INVITE: Table = {
    (S.CALLING, I.TIMER_A): (S.CALLING, (A.RESEND_REQUEST, A.BACKOFF_A)),
    (S.CALLING, I.TIMER_B): (S.TERMINATED, (A.STOP_TIMERS, A.TIMEOUT)),
    (S.CALLING, I.RECV_1XX): (S.PROCEEDING, (A.STOP_TIMERS, A.START_C, A.PASS_UP)),
    (S.CALLING, I.RECV_2XX): (S.TERMINATED, (A.STOP_TIMERS, A.PASS_UP)),
    (S.CALLING, I.RECV_FINAL): (S.COMPLETED, (A.STOP_TIMERS, A.SEND_ACK, A.PASS_UP, A.START_D)),
    (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (A.START_C, A.PASS_UP)),
    (S.PROCEEDING, I.RECV_2XX): (S.TERMINATED, (A.STOP_TIMERS, A.PASS_UP)),
    (S.PROCEEDING, I.RECV_FINAL): (S.COMPLETED, (A.STOP_TIMERS, A.SEND_ACK, A.PASS_UP, A.START_D)),
    # Timer C (§16.6 step 11) is the proxy's: the transaction stays, the proxy CANCELs.
    (S.PROCEEDING, I.TIMER_C): (S.PROCEEDING, (A.TIMEOUT,)),
    (S.COMPLETED, I.RECV_FINAL): (S.COMPLETED, (A.SEND_ACK,)),
    (S.COMPLETED, I.RECV_1XX): (S.COMPLETED, ()),
    (S.COMPLETED, I.RECV_2XX): (S.COMPLETED, ()),
    (S.COMPLETED, I.TIMER_D): (S.TERMINATED, ()),
}

CLIENT_NON_INVITE: Table = {
    (S.TRYING, I.TIMER_E): (S.TRYING, (A.RESEND_REQUEST, A.BACKOFF_E)),
    (S.TRYING, I.TIMER_F): (S.TERMINATED, (A.STOP_TIMERS, A.TIMEOUT)),
    (S.TRYING, I.RECV_1XX): (S.PROCEEDING, (A.PASS_UP,)),
    (S.TRYING, I.RECV_2XX): (S.COMPLETED, (A.STOP_TIMERS, A.PASS_UP, A.START_K)),
    (S.TRYING, I.RECV_FINAL): (S.COMPLETED, (A.STOP_TIMERS, A.PASS_UP, A.START_K)),
    (S.PROCEEDING, I.TIMER_E): (S.PROCEEDING, (A.RESEND_REQUEST, A.BACKOFF_E)),
    (S.PROCEEDING, I.TIMER_F): (S.TERMINATED, (A.STOP_TIMERS, A.TIMEOUT)),
    (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (A.PASS_UP,)),
    (S.PROCEEDING, I.RECV_2XX): (S.COMPLETED, (A.STOP_TIMERS, A.PASS_UP, A.START_K)),
    (S.PROCEEDING, I.RECV_FINAL): (S.COMPLETED, (A.STOP_TIMERS, A.PASS_UP, A.START_K)),
    (S.COMPLETED, I.RECV_1XX): (S.COMPLETED, ()),
    (S.COMPLETED, I.RECV_2XX): (S.COMPLETED, ()),
    (S.COMPLETED, I.RECV_FINAL): (S.COMPLETED, ()),
    (S.COMPLETED, I.TIMER_K): (S.TERMINATED, ()),
}


# --- what a transaction hands back --------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendMessage:
    """Bytes to put on the wire; `message` is set when they are a new message (not a
    retransmission of stored bytes)."""

    data: bytes
    message: Request | Response | None = None

    @classmethod
    def of(cls, message: Request | Response) -> SendMessage:
        return cls(message.to_bytes(), message)


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: Response


@dataclass(frozen=True, slots=True)
class TimedOut:
    timer: str  # "B", "C", "F" or "H"


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Output = SendMessage | ResponseReceived | TimedOut | Terminated


class InvalidTransition(LocalProtocolError):
    """The caller fed an input that the state machine does not accept in this state."""


_ids = itertools.count(1)


@dataclass(eq=False, kw_only=True)
class Transaction:
    """The state machine. Server transactions keep no message objects, only the bytes of
    the last response, so the many that wait out Timer J or I cost little memory and
    nothing to the garbage collector."""

    reliable: bool
    timers: TimerValues
    table: Table
    state: State
    context: Any = None  # opaque to this module: the caller's flow/routing data
    id: int = field(default_factory=lambda: next(_ids))
    last_response_data: bytes | None = None
    last_status: int | None = None
    _deadlines: dict[str, float] = field(default_factory=dict)
    _intervals: dict[str, float] = field(default_factory=dict)

    @property
    def deadline(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def handle_timer(self, now: float) -> list[Output]:
        """Fire every timer that is due, earliest first."""
        out: list[Output] = []
        while self._deadlines and not self.terminated:
            name, due = min(self._deadlines.items(), key=lambda item: item[1])
            if due > now:
                break
            del self._deadlines[name]
            out += self._apply(Input(name), now)
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
        if self.state is State.TERMINATED:
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
        if action is A.STOP_TIMERS:
            self._deadlines.clear()
            return []
        starting, name = _TIMER_ACTIONS[action]
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
        if name in ("B", "F", "H"):
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
    tx.last_response_data, tx.last_status = out.data, message.status
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
    return [SendMessage.of(build_ack_for_non_2xx(tx.request, message))]


def _pass_up(tx: Transaction, message: Request | Response | None, event: Input) -> list[Output]:
    assert isinstance(message, Response)
    return [ResponseReceived(message)]


def _timeout(tx: Transaction, message: Request | Response | None, event: Input) -> list[Output]:
    return [TimedOut(event.value)]


_ACTIONS: dict[Action, Callable[[Transaction, Request | Response | None, Input], list[Output]]] = {
    A.SEND: _send,
    A.RESEND_RESPONSE: _resend_response,
    A.RESEND_REQUEST: _resend_request,
    A.SEND_ACK: _send_ack,
    A.PASS_UP: _pass_up,
    A.TIMEOUT: _timeout,
}


def _response_input(status: int, sending: bool) -> Input:
    if status < 200:
        return I.SEND_1XX if sending else I.RECV_1XX
    if status < 300:
        return I.SEND_2XX if sending else I.RECV_2XX
    return I.SEND_FINAL if sending else I.RECV_FINAL


class ServerTransaction(Transaction):
    @classmethod
    def create(
        cls,
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
            return cls(
                reliable=reliable,
                timers=timers,
                table=SERVER_INVITE,
                state=State.PROCEEDING,
                context=context,
            )
        return cls(
            reliable=reliable,
            timers=timers,
            table=SERVER_NON_INVITE,
            state=State.TRYING,
            context=context,
        )

    def receive_request(self, request: Request, now: float) -> list[Output]:
        """A retransmission of our request, or the ACK for a non-2xx final response."""
        return self._apply(I.ACK if request.method == "ACK" else I.REQUEST, now, request)

    def send_response(self, response: Response, now: float) -> list[Output]:
        return self._apply(_response_input(response.status, sending=True), now, response)


@dataclass(eq=False, kw_only=True)
class ClientTransaction(Transaction):
    request: Request
    request_data: bytes  # serialised once, for Timer A/E retransmissions

    @classmethod
    def create(
        cls,
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
        tx = cls(
            reliable=reliable,
            timers=timers,
            context=context,
            request=request,
            request_data=first.data,
            table=CLIENT_INVITE if invite else CLIENT_NON_INVITE,
            state=State.CALLING if invite else State.TRYING,
        )
        for action in (A.START_A, A.START_B) if invite else (A.START_E, A.START_F):
            tx._run(action, now, None, I.REQUEST)
        return tx, [first]

    def receive_response(self, response: Response, now: float) -> list[Output]:
        return self._apply(_response_input(response.status, sending=False), now, response)


def build_ack_for_non_2xx(request: Request, response: Response) -> Request:
    """§17.1.1.3: same Request-URI, Call-ID, From, top Via and Route as the INVITE; To
    from the response (with its tag); CSeq number of the INVITE with method ACK."""
    number, _ = request.cseq
    items: list[Header] = []
    vias = request.headers.get_all("Via")
    items.append(Header("Via", vias[0]))
    for header in request.headers:
        if header.key in ("from", "call-id", "route", "max-forwards"):
            items.append(header)
    to_value = response.headers.get("To") or request.headers.get("To") or ""
    items.append(Header("To", to_value))
    items.append(Header("CSeq", f"{number} ACK"))
    return Request(Headers(items), b"", method="ACK", uri=request.uri)
