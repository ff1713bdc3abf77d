"""The RFC 3261 §17 transaction state machines (with RFC 6026's Accepted state) as tables:
(state, input) -> (next state, actions). Nothing but data; transaction.py runs them."""

from __future__ import annotations

import enum
from typing import Final


class State(enum.Enum):
    # Members are singletons compared by identity: hash them by identity too, in C,
    # not by name in Python (the tables look them up several times per message).
    __hash__ = object.__hash__

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"  # RFC 6026: an INVITE answered with 2xx
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Input(enum.Enum):
    __hash__ = object.__hash__  # as State's

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
    TIMER_L = "L"
    TIMER_M = "M"


class Action(enum.Enum):
    __hash__ = object.__hash__  # as State's

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
    START_L = "start_L"
    START_M = "start_M"
    BACKOFF_A = "backoff_A"
    BACKOFF_E = "backoff_E"
    BACKOFF_G = "backoff_G"
    STOP_TIMERS = "stop_timers"


S, I, A = State, Input, Action  # noqa: E741 -- short names keep the tables readable
# START_x and BACKOFF_x actions: (starting?, timer name), worked out once.
TIMER_ACTIONS: Final = {
    action: (action.name.startswith("START_"), action.value[-1])
    for action in Action
    if action.name.startswith(("START_", "BACKOFF_"))
}
Table = dict[tuple[State, Input], tuple[State, tuple[Action, ...]]]

SERVER_INVITE: Final[Table] = {
    (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (A.RESEND_RESPONSE,)),
    (S.PROCEEDING, I.SEND_1XX): (S.PROCEEDING, (A.SEND,)),
    # RFC 6026 §7.1: after a 2xx the transaction absorbs INVITE retransmissions, lets the
    # 2xx retransmissions of the UAS through, and hands any ACK that matches up (Timer L).
    (S.PROCEEDING, I.SEND_2XX): (S.ACCEPTED, (A.SEND, A.START_L)),
    (S.PROCEEDING, I.SEND_FINAL): (S.COMPLETED, (A.SEND, A.START_G, A.START_H)),
    (S.ACCEPTED, I.REQUEST): (S.ACCEPTED, ()),
    (S.ACCEPTED, I.SEND_2XX): (S.ACCEPTED, (A.SEND,)),
    (S.ACCEPTED, I.ACK): (S.ACCEPTED, (A.PASS_UP,)),
    (S.ACCEPTED, I.TIMER_L): (S.TERMINATED, ()),
    (S.COMPLETED, I.REQUEST): (S.COMPLETED, (A.RESEND_RESPONSE,)),
    (S.COMPLETED, I.TIMER_G): (S.COMPLETED, (A.RESEND_RESPONSE, A.BACKOFF_G)),
    (S.COMPLETED, I.TIMER_H): (S.TERMINATED, (A.STOP_TIMERS, A.TIMEOUT)),
    (S.COMPLETED, I.ACK): (S.CONFIRMED, (A.STOP_TIMERS, A.START_I)),
    (S.CONFIRMED, I.ACK): (S.CONFIRMED, ()),
    (S.CONFIRMED, I.REQUEST): (S.CONFIRMED, ()),
    (S.CONFIRMED, I.TIMER_I): (S.TERMINATED, ()),
}

SERVER_NON_INVITE: Final[Table] = {
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

CLIENT_INVITE: Final[Table] = {
    (S.CALLING, I.TIMER_A): (S.CALLING, (A.RESEND_REQUEST, A.BACKOFF_A)),
    (S.CALLING, I.TIMER_B): (S.TERMINATED, (A.STOP_TIMERS, A.TIMEOUT)),
    (S.CALLING, I.RECV_1XX): (S.PROCEEDING, (A.STOP_TIMERS, A.START_C, A.PASS_UP)),
    # RFC 6026 §7.2: a 2xx moves to Accepted, where its retransmissions (and the 2xx of
    # other forks) are passed up for the proxy to relay, until Timer M.
    (S.CALLING, I.RECV_2XX): (S.ACCEPTED, (A.STOP_TIMERS, A.PASS_UP, A.START_M)),
    (S.CALLING, I.RECV_FINAL): (S.COMPLETED, (A.STOP_TIMERS, A.SEND_ACK, A.PASS_UP, A.START_D)),
    (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (A.START_C, A.PASS_UP)),
    (S.PROCEEDING, I.RECV_2XX): (S.ACCEPTED, (A.STOP_TIMERS, A.PASS_UP, A.START_M)),
    (S.PROCEEDING, I.RECV_FINAL): (S.COMPLETED, (A.STOP_TIMERS, A.SEND_ACK, A.PASS_UP, A.START_D)),
    # Timer C (§16.8) is the proxy's: it CANCELs; the transaction waits 64*T1 (Timer B
    # again) for the final response to that, then ends without one (§9.1).
    (S.PROCEEDING, I.TIMER_C): (S.PROCEEDING, (A.TIMEOUT, A.START_B)),
    (S.PROCEEDING, I.TIMER_B): (S.TERMINATED, (A.STOP_TIMERS,)),
    (S.ACCEPTED, I.RECV_2XX): (S.ACCEPTED, (A.PASS_UP,)),
    (S.ACCEPTED, I.RECV_1XX): (S.ACCEPTED, ()),
    (S.ACCEPTED, I.RECV_FINAL): (S.ACCEPTED, ()),
    (S.ACCEPTED, I.TIMER_M): (S.TERMINATED, ()),
    (S.COMPLETED, I.RECV_FINAL): (S.COMPLETED, (A.SEND_ACK,)),
    (S.COMPLETED, I.RECV_1XX): (S.COMPLETED, ()),
    (S.COMPLETED, I.RECV_2XX): (S.COMPLETED, ()),
    (S.COMPLETED, I.TIMER_D): (S.TERMINATED, ()),
}

CLIENT_NON_INVITE: Final[Table] = {
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
