"""RFC 3261 §17 state machines driven by injected time."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sipserver.sip.matching import server_key
from sipserver.sip.message import Request, Response, parse_message
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    InvalidTransition,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc") -> Request:
    raw = (
        f"{method} sip:+1@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        f"From: <sip:a@example.test>;tag=f\r\nTo: <sip:+1@example.test>\r\nCall-ID: c1\r\n"
        f"CSeq: 7 {method}\r\nRoute: <sip:proxy.example.test;lr>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(raw.encode())
    assert isinstance(message, Request)
    return message


def response(req: Request, status: int) -> Response:
    raw = (
        f"SIP/2.0 {status} X\r\nVia: {req.headers.get_all('Via')[0]}\r\nFrom: {req.headers.get('From')}\r\n"
        f"To: {req.headers.get('To')};tag=t\r\nCall-ID: c1\r\nCSeq: {req.cseq[0]} {req.method}\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(raw.encode())
    assert isinstance(message, Response)
    return message


def sent(outputs: Sequence[object]) -> list[bytes]:
    return [o.data for o in outputs if isinstance(o, SendMessage)]


def fire_all(tx: ServerTransaction | ClientTransaction, until: float) -> list[tuple[float, object]]:
    """Advance time deadline by deadline, recording what each timer produced."""
    events: list[tuple[float, object]] = []
    while tx.deadline is not None and tx.deadline <= until:
        now = tx.deadline
        events += [(now, item) for item in tx.handle_timer(now)]
    return events


def test_client_invite_over_udp_retransmits_with_timer_a_and_gives_up_with_timer_b() -> None:
    tx, first = ClientTransaction.create(request(), reliable=False, now=0.0)
    assert tx.request is not None and sent(first) == [tx.request.to_bytes()]
    events = fire_all(tx, 100.0)
    sends = [t for t, item in events if isinstance(item, SendMessage)]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles each time, no cap
    assert (32.0, TimedOut("B")) in events
    assert tx.state is State.TERMINATED


def test_client_invite_over_tcp_has_no_timer_a() -> None:
    tx, _ = ClientTransaction.create(request(), reliable=True, now=0.0)
    events = fire_all(tx, 100.0)
    assert [item for _, item in events] == [TimedOut("B"), Terminated()]


def test_client_invite_non_2xx_is_acked_and_absorbed_until_timer_d() -> None:
    req = request()
    tx, _ = ClientTransaction.create(req, reliable=False, now=0.0)
    out = tx.receive_response(response(req, 180), 0.1)
    assert [type(o) for o in out] == [ResponseReceived]
    assert tx.state is State.PROCEEDING
    out = tx.receive_response(response(req, 486), 0.2)
    acks = [o.message for o in out if isinstance(o, SendMessage)]
    assert len(acks) == 1 and isinstance(acks[0], Request)
    ack = acks[0]
    assert ack.method == "ACK" and ack.uri == req.uri and ack.cseq == (7, "ACK")
    assert ack.to is not None and ack.to.tag == "t"
    assert ack.headers.get("Route") == "<sip:proxy.example.test;lr>"
    assert ack.top_via is not None and ack.top_via.branch == "z9hG4bKabc"
    again = tx.receive_response(response(req, 486), 0.3)
    assert [type(o) for o in again] == [
        SendMessage
    ]  # retransmitted final: ACK again, not passed up
    assert tx.deadline == pytest.approx(32.2)
    assert fire_all(tx, 40.0)[-1][1] == Terminated()


def test_timer_c_reports_a_stuck_proceeding_invite() -> None:
    req = request()
    tx, _ = ClientTransaction.create(req, reliable=True, now=0.0)
    tx.receive_response(response(req, 180), 1.0)
    assert tx.deadline == pytest.approx(181.0)
    assert tx.handle_timer(181.0) == [TimedOut("C")]
    assert tx.state is State.PROCEEDING


def test_client_non_invite_timer_e_caps_at_t2_and_timer_f_times_out() -> None:
    tx, _ = ClientTransaction.create(request("OPTIONS"), reliable=False, now=0.0)
    events = fire_all(tx, 100.0)
    sends = [t for t, item in events if isinstance(item, SendMessage)]
    assert sends[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # 0.5, 1, 2, 4, then T2=4
    assert events[-2:] == [(32.0, TimedOut("F")), (32.0, Terminated())]


def test_client_non_invite_completed_waits_timer_k() -> None:
    req = request("OPTIONS")
    tx, _ = ClientTransaction.create(req, reliable=False, now=0.0)
    assert [type(o) for o in tx.receive_response(response(req, 200), 0.2)] == [ResponseReceived]
    assert tx.state is State.COMPLETED and tx.deadline == pytest.approx(5.2)
    assert tx.receive_response(response(req, 200), 1.0) == []


def test_server_invite_final_retransmits_with_timer_g_until_ack() -> None:
    req = request()
    tx = ServerTransaction.create(req.method, reliable=False, now=0.0)
    final = response(req, 404)
    assert sent(tx.send_response(final, 0.0)) == [final.to_bytes()]
    events = fire_all(tx, 16.0)
    assert [t for t, _ in events] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # G doubles, capped at T2
    assert sent(tx.receive_request(req, 16.1)) == [final.to_bytes()]  # retransmitted INVITE
    ack = request("ACK")
    assert tx.receive_request(ack, 16.2) == []
    assert tx.state is State.CONFIRMED and tx.deadline == pytest.approx(21.2)  # I = T4
    assert tx.handle_timer(21.2) == [Terminated()]


def test_server_invite_timer_h_without_ack() -> None:
    req = request()
    tx = ServerTransaction.create(req.method, reliable=True, now=0.0)
    tx.send_response(response(req, 486), 0.0)
    assert tx.handle_timer(32.0) == [TimedOut("H"), Terminated()]


@pytest.mark.parametrize("reliable", [False, True])
def test_server_invite_2xx_is_accepted_until_timer_l(reliable: bool) -> None:
    """RFC 6026 §7.1: after a 2xx, INVITE retransmissions are absorbed (the UAS core, not
    the transaction, retransmits 2xx), further 2xx are sent, a matching ACK is handed up,
    and Timer L (64*T1, on every transport) ends the transaction."""
    req = request()
    tx = ServerTransaction.create(req.method, reliable=reliable, now=0.0)
    trying = response(req, 100)
    assert sent(tx.send_response(trying, 0.0)) == [trying.to_bytes()]
    assert sent(tx.receive_request(req, 0.05)) == [trying.to_bytes()]
    ok = response(req, 200)
    assert sent(tx.send_response(ok, 0.1)) == [ok.to_bytes()]
    assert tx.state is State.ACCEPTED and tx.deadline == pytest.approx(32.1)
    assert tx.receive_request(req, 0.2) == []
    assert sent(tx.send_response(ok, 0.6)) == [ok.to_bytes()]
    ack = request("ACK")
    assert tx.receive_request(ack, 0.7) == [RequestReceived(ack)]
    with pytest.raises(InvalidTransition):
        tx.send_response(response(req, 486), 0.8)
    ((at, item),) = fire_all(tx, 40.0)
    assert at == pytest.approx(32.1) and item == Terminated()


@pytest.mark.parametrize("reliable", [False, True])
def test_client_invite_2xx_is_accepted_and_retransmissions_passed_up_until_timer_m(
    reliable: bool,
) -> None:
    req = request()
    tx, _ = ClientTransaction.create(req, reliable=reliable, now=0.0)
    ok = response(req, 200)
    assert tx.receive_response(ok, 0.1) == [ResponseReceived(ok)]
    assert tx.state is State.ACCEPTED and tx.deadline == pytest.approx(32.1)
    assert tx.receive_response(ok, 1.1) == [ResponseReceived(ok)]
    assert tx.receive_response(response(req, 180), 1.2) == []
    ((at, item),) = fire_all(tx, 40.0)
    assert at == pytest.approx(32.1) and item == Terminated()


def test_timer_c_restarts_timer_b_and_a_silent_callee_ends_the_transaction() -> None:
    req = request()
    tx, _ = ClientTransaction.create(req, reliable=True, now=0.0)
    tx.receive_response(response(req, 180), 1.0)
    assert tx.handle_timer(181.0) == [TimedOut("C")]
    assert tx.state is State.PROCEEDING and tx.deadline == pytest.approx(213.0)
    ((at, item),) = fire_all(tx, 300.0)
    assert at == pytest.approx(213.0) and item == Terminated()


def test_server_non_invite_absorbs_in_trying_and_resends_when_completed() -> None:
    req = request("OPTIONS")
    tx = ServerTransaction.create(req.method, reliable=False, now=0.0)
    assert tx.receive_request(req, 0.1) == []
    ok = response(req, 200)
    tx.send_response(ok, 0.2)
    assert sent(tx.receive_request(req, 0.3)) == [ok.to_bytes()]
    assert tx.deadline == pytest.approx(32.2)  # J = 64*T1 on UDP
    assert tx.handle_timer(32.2) == [Terminated()]


def test_server_non_invite_over_tcp_terminates_immediately_after_final() -> None:
    req = request("OPTIONS")
    tx = ServerTransaction.create(req.method, reliable=True, now=5.0)
    out = tx.send_response(response(req, 200), 5.0)
    assert out[-1] == Terminated()  # Timer J is zero on TCP: no waiting state at all
    assert tx.terminated and tx.deadline is None


def test_illegal_input_is_refused() -> None:
    req = request("OPTIONS")
    tx = ServerTransaction.create(req.method, reliable=True, now=0.0)
    tx.send_response(response(req, 200), 0.0)
    with pytest.raises(InvalidTransition):
        tx.send_response(response(req, 200), 0.0)


def test_ack_matches_the_invite_server_transaction_and_cancel_does_not() -> None:
    assert server_key(request("ACK")) == server_key(request("INVITE"))
    assert server_key(request("CANCEL")) != server_key(request("INVITE"))
    rfc2543 = request("INVITE", branch="oldstyle")
    assert server_key(rfc2543)[0] == "2543"
