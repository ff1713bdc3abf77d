"""The stateful proxy in the pure core: forwarding, Record-Route, in-dialog routing,
failover, CANCEL and timeouts, with injected time and no sockets."""

from __future__ import annotations

from sipserver.config.loader import parse_config
from sipserver.proxy.core import SipCore
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Request, Response, parse_message
from tests.configs import dial_plan, peer, table

PEERS = (
    table("server", {"fqdn": "sip.example.test", "sip_port": 5060, "tls_port": 5061})
    + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
    + peer("pbx1", addresses=["192.0.2.20"], transport="udp", health_check=None)
)
CONFIG = parse_config(
    PEERS
    + peer("pbx2", addresses=["192.0.2.21"], transport="udp", health_check=None)
    + dial_plan("lobby", "unsecured", ["pbx1", "pbx2"])
)
CALLER = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.10", 5060))
PBX1 = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.20", 5060))
PBX2 = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.21", 5060))


def invite(extra: str = "") -> bytes:
    return (
        "INVITE sip:5000@sip.example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcaller1\r\n"
        "From: <sip:a@gw1.example.test>;tag=ft\r\nTo: <sip:5000@sip.example.test>\r\nCall-ID: call-1\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:a@192.0.2.10:5060>\r\nMax-Forwards: 70\r\n"
        f"X-Peer-Identity: forged.example.test\r\nX-Custom:  kept  as is\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def parse(t: Transmit) -> Request | Response:
    message = parse_message(t.data)
    assert isinstance(message, (Request, Response))
    return message


def to(out: list[Transmit], flow_remote: tuple[str, int]) -> list[Request | Response]:
    return [parse(t) for t in out if t.flow.remote == flow_remote]


def answer(request: Request, status: int, reason: str = "X", extra: str = "") -> bytes:
    vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
    rr = "".join(f"Record-Route: {v}\r\n" for v in request.headers.get_all("Record-Route"))
    return (
        f"SIP/2.0 {status} {reason}\r\n{vias}{rr}From: {request.headers.get('From')}\r\n"
        f"To: {request.headers.get('To')};tag=callee\r\nCall-ID: call-1\r\nCSeq: {request.cseq[0]} {request.cseq[1]}\r\n"
        f"Contact: <sip:b@192.0.2.20:5060>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def forwarding(core: SipCore) -> int:
    """Client transactions of calls (health-check pings aside)."""
    return sum(1 for kind in core.transactions().client_kinds if kind != "health")


def start() -> tuple[SipCore, list[Transmit]]:
    core = SipCore(CONFIG)
    return core, core.receive_datagram(invite(), CALLER, 0.0)


def test_invite_is_forwarded_with_via_record_route_and_identity() -> None:
    _core, out = start()
    assert [m.status for m in to(out, CALLER.remote) if isinstance(m, Response)] == [100]
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    assert forwarded.uri == "sip:5000@pbx1.example.test:5060"
    vias = forwarded.vias
    assert (
        vias[0].host == "sip.example.test"
        and vias[0].branch
        and vias[0].branch.startswith("z9hG4bK-sips")
    )
    assert vias[1].branch == "z9hG4bKcaller1"
    assert forwarded.headers.get("Max-Forwards") == "69"
    assert forwarded.headers.get_all("Record-Route") == [
        "<sip:sip.example.test:5060;transport=udp;lr;peer=pbx1>",
        "<sip:sip.example.test:5060;transport=udp;lr;peer=gw1>",
    ]
    assert forwarded.headers.get_all("X-Peer-Identity") == [
        "gw1.example.test;transport=udp;source=192.0.2.10"
    ]
    assert b"X-Custom:  kept  as is\r\n" in forwarded.to_bytes()


def test_responses_travel_back_without_our_via_and_the_dialog_follows_the_route_set() -> None:
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    ringing = to(core.receive_datagram(answer(forwarded, 180, "Ringing"), PBX1, 0.1), CALLER.remote)
    assert [r.status for r in ringing if isinstance(r, Response)] == [180]
    assert len(ringing[0].vias) == 1
    ok = to(core.receive_datagram(answer(forwarded, 200, "OK"), PBX1, 0.2), CALLER.remote)
    assert [r.status for r in ok if isinstance(r, Response)] == [200]
    # A retransmitted 2xx is relayed even though the transactions are gone.
    again = core.receive_datagram(answer(forwarded, 200, "OK"), PBX1, 0.3)
    assert [t.flow.remote for t in again] == [CALLER.remote]
    # ACK and BYE from the caller follow the Route set (reverse of Record-Route).
    routes = "Route: <sip:sip.example.test:5060;transport=udp;lr;peer=gw1>, <sip:sip.example.test:5060;transport=udp;lr;peer=pbx1>\r\n"
    ack = (
        f"ACK sip:b@192.0.2.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack1\r\n{routes}"
        "From: <sip:a@gw1.example.test>;tag=ft\r\nTo: <sip:5000@sip.example.test>;tag=callee\r\n"
        "Call-ID: call-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    (relayed,) = to(core.receive_datagram(ack, CALLER, 0.4), ("192.0.2.20", 5060))
    assert (
        isinstance(relayed, Request) and relayed.method == "ACK" and "Route" not in relayed.headers
    )
    bye = (
        ack.replace(b"ACK sip", b"BYE sip")
        .replace(b"1 ACK", b"2 BYE")
        .replace(b"z9hG4bKack1", b"z9hG4bKbye1")
    )
    (bye_out,) = to(core.receive_datagram(bye, CALLER, 0.5), ("192.0.2.20", 5060))
    assert isinstance(bye_out, Request) and bye_out.method == "BYE"
    done = to(core.receive_datagram(answer(bye_out, 200, "OK"), PBX1, 0.6), CALLER.remote)
    assert [(r.status, r.cseq) for r in done if isinstance(r, Response)] == [(200, (2, "BYE"))]


def test_503_and_unreachable_targets_fail_over_then_503_with_retry_after() -> None:
    core, out = start()
    (first,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(first, Request)
    out = core.receive_datagram(answer(first, 503, "Busy Here"), PBX1, 0.1)
    (second,) = [
        m for m in to(out, ("192.0.2.21", 5060)) if isinstance(m, Request) and m.method == "INVITE"
    ]
    assert second.uri == "sip:5000@pbx2.example.test:5060"
    assert second.top_via is not None and second.top_via.branch != first.top_via.branch  # type: ignore[union-attr]
    flow_to_pbx2 = next(t.flow for t in out if t.flow.remote == ("192.0.2.21", 5060))
    final = to(core.transport_failed(flow_to_pbx2, "connection refused", 0.2), CALLER.remote)
    (response,) = [r for r in final if isinstance(r, Response)]
    assert response.status == 503 and response.headers.get("Retry-After") == "30"
    assert "pbx1: 503 Service Unavailable; pbx2: connection refused" in (
        response.headers.get("Warning") or ""
    )


def test_timer_b_moves_on_and_the_last_timeout_is_408() -> None:
    core, _ = start()
    out: list[Transmit] = []
    for now in (32.0, 64.5):
        out += core.handle_timers(now)
    responses = [r for r in to(out, CALLER.remote) if isinstance(r, Response)]
    assert [r.status for r in responses] == [408]
    invites = [
        m for m in to(out, ("192.0.2.21", 5060)) if isinstance(m, Request) and m.method == "INVITE"
    ]
    assert invites, "pbx2 was tried after pbx1 timed out"


def test_cancel_waits_for_a_provisional_then_is_relayed_and_487_comes_back() -> None:
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    cancel = invite().replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    out = core.receive_datagram(cancel, CALLER, 0.1)
    assert [r.status for r in to(out, CALLER.remote) if isinstance(r, Response)] == [200]
    assert to(out, ("192.0.2.20", 5060)) == []  # nothing downstream before a provisional
    out = core.receive_datagram(answer(forwarded, 180, "Ringing"), PBX1, 0.2)
    downstream = [m for m in to(out, ("192.0.2.20", 5060)) if isinstance(m, Request)]
    assert [m.method for m in downstream] == ["CANCEL"]
    assert downstream[0].top_via.branch == forwarded.top_via.branch  # type: ignore[union-attr]
    out = core.receive_datagram(answer(forwarded, 487, "Request Terminated"), PBX1, 0.3)
    assert [r.status for r in to(out, CALLER.remote) if isinstance(r, Response)] == [487]
    assert [m.method for m in to(out, ("192.0.2.20", 5060)) if isinstance(m, Request)] == ["ACK"]


def test_a_looping_request_gets_482() -> None:
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    # pbx1 sends it straight back to us for the number we were asked for: a loop.
    back = forwarded.to_bytes().replace(
        b"sip:5000@pbx1.example.test:5060", b"sip:5000@sip.example.test", 1
    )
    looped = [parse(t) for t in core.receive_datagram(back, PBX1, 1.0)]
    assert [m.status for m in looped if isinstance(m, Response)] == [482]


def test_health_checks_mark_a_silent_target_down_and_calls_skip_it() -> None:
    config = parse_config(
        table("server", {"fqdn": "sip.example.test"})
        + table("routing", {"down_after_failures": 2})
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
        + peer("pbx1", addresses=["192.0.2.20"], transport="udp", health_check=10.0)
        + peer("pbx2", addresses=["192.0.2.21"], transport="udp", health_check=0)
        + dial_plan("lobby", "unsecured", ["pbx1", "pbx2"])
    )
    core = SipCore(config)
    due = core.next_deadline()
    assert due is not None and due <= 0.0  # due at once
    pings = core.handle_timers(0.0)
    assert [(parse(t).method, t.flow.remote) for t in pings] == [("OPTIONS", ("192.0.2.20", 5060))]  # type: ignore[union-attr]
    # Not due, and one ping at a time: only Timer E retransmissions of the same OPTIONS.
    assert {t.data for t in core.handle_timers(5.0)} == {pings[0].data}
    again = core.handle_timers(32.0)  # Timer F: first failure; due again (10 s passed)
    assert core.health.is_up(config.peer("pbx1"))
    assert [parse(t).method for t in again if t.data != pings[0].data] == ["OPTIONS"]  # type: ignore[union-attr]
    third = core.handle_timers(64.5)  # second failure: down; the next ping goes out
    assert not core.health.is_up(config.peer("pbx1"))
    out = core.receive_datagram(invite(), CALLER, 65.0)
    assert to(out, ("192.0.2.20", 5060)) == []
    assert [m.method for m in to(out, ("192.0.2.21", 5060)) if isinstance(m, Request)] == ["INVITE"]
    # One good answer brings it back.
    ping = next(m for m in map(parse, third) if isinstance(m, Request) and m.cseq[0] == 3)
    core.receive_datagram(answer(ping, 200, "OK"), PBX1, 75.1)
    assert core.health.is_up(config.peer("pbx1"))
    changes = [e for e in core.take_events() if e.log_name == "target_health_changed"]
    assert [e.fields()["state"] for e in changes] == ["down", "up"]


def test_2xx_retransmissions_pass_through_both_accepted_transactions_until_64_t1() -> None:
    """RFC 6026: the answer and its retransmissions go upstream through the transactions'
    Accepted state (no side table); INVITE retransmissions are absorbed; after 64*T1 both
    transactions are gone and a stray 2xx is only logged."""
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    ok = answer(forwarded, 200, "OK")
    first = core.receive_datagram(ok, PBX1, 0.2)
    assert [m.status for m in to(first, CALLER.remote) if isinstance(m, Response)] == [200]
    assert core.receive_datagram(invite(), CALLER, 0.3) == []  # absorbed, not re-forwarded
    again = core.receive_datagram(ok, PBX1, 1.2)  # the callee retransmits its 200
    assert [m.status for m in to(again, CALLER.remote) if isinstance(m, Response)] == [200]
    assert core.transaction_count == 1 and forwarding(core) == 1  # Accepted on both sides
    core.handle_timers(32.3)  # Timer L and Timer M (64*T1 = 32 s)
    assert core.transaction_count == 0 and forwarding(core) == 0
    core.take_events()
    assert core.receive_datagram(ok, PBX1, 33.0) == []
    assert [e.log_name for e in core.take_events()] == ["sip_response_unmatched"]


def test_an_ack_that_reuses_the_invite_branch_is_routed_as_the_ack_for_the_2xx() -> None:
    """Some UAs send the ACK for a 2xx with the INVITE's branch: it matches the Accepted
    transaction, which hands it up to be relayed along the Route set (RFC 6026 §7.1)."""
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    ok = core.receive_datagram(answer(forwarded, 200, "OK"), PBX1, 0.2)
    (answered,) = to(ok, CALLER.remote)
    assert isinstance(answered, Response)
    routes = "".join(f"Route: {v}\r\n" for v in reversed(answered.headers.get_all("Record-Route")))
    ack = (
        "ACK sip:b@192.0.2.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcaller1\r\n"
        f"{routes}From: <sip:a@gw1.example.test>;tag=ft\r\nTo: <sip:5000@sip.example.test>;tag=callee\r\n"
        "Call-ID: call-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    relayed = to(core.receive_datagram(ack, CALLER, 0.3), ("192.0.2.20", 5060))
    assert [m.method for m in relayed if isinstance(m, Request)] == ["ACK"]


def test_timer_c_on_a_ringing_call_cancels_the_callee_and_answers_408() -> None:
    """§16.8: a call still ringing when Timer C fires is cancelled downstream and the caller
    gets 408 at once with a Warning saying why; the late 487 is ACKed and absorbed."""
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    core.receive_datagram(answer(forwarded, 180, "Ringing"), PBX1, 1.0)
    early = core.handle_timers(180.9)  # Timer C runs 180 s from the last provisional
    assert [m for m in to(early, CALLER.remote) if isinstance(m, Response)] == []
    fired = core.handle_timers(181.0)
    upstream = [m for m in to(fired, CALLER.remote) if isinstance(m, Response)]
    assert [m.status for m in upstream] == [408]
    warning = upstream[0].headers.get("Warning") or ""
    assert "No answer from pbx1 within 180 s (Timer C)" in warning
    downstream = [m for m in to(fired, ("192.0.2.20", 5060)) if isinstance(m, Request)]
    assert [m.method for m in downstream if m.method != "OPTIONS"] == ["CANCEL"]  # no pings
    call = next(e for e in core.take_events() if e.log_name == "call_ended")
    assert call.fields()["status"] == 408
    late = core.receive_datagram(answer(forwarded, 487, "Request Terminated"), PBX1, 181.2)
    assert to(late, CALLER.remote) == []
    assert [m.method for m in to(late, ("192.0.2.20", 5060)) if isinstance(m, Request)] == ["ACK"]


def test_timer_c_gives_up_on_a_callee_that_never_answers_the_cancel() -> None:
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    core.receive_datagram(answer(forwarded, 180, "Ringing"), PBX1, 1.0)
    core.handle_timers(181.0)
    ack = invite().replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    core.receive_datagram(ack, CALLER, 181.1)  # the caller ACKs our 408
    deadline = core.next_deadline()
    while deadline is not None and deadline < 400:
        core.handle_timers(deadline)
        deadline = core.next_deadline()
    assert (
        core.transaction_count == 0
        and forwarding(core) == 0
        and not core.transactions().proxied_calls
    )


def test_a_2xx_that_crosses_our_408_still_reaches_the_caller() -> None:
    core, out = start()
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    core.receive_datagram(answer(forwarded, 180, "Ringing"), PBX1, 1.0)
    core.handle_timers(181.0)
    crossed = core.receive_datagram(answer(forwarded, 200, "OK"), PBX1, 181.1)
    assert [m.status for m in to(crossed, CALLER.remote) if isinstance(m, Response)] == [200]


def test_overloaded_core_sheds_new_calls_but_keeps_admitted_ones_and_dialogs() -> None:
    core, out = start()  # a call admitted before the overload
    (forwarded,) = to(out, ("192.0.2.20", 5060))
    assert isinstance(forwarded, Request)
    core.set_overloaded(True)
    # The admitted call is answered and hung up through us as usual.
    ok = core.receive_datagram(answer(forwarded, 200, "OK"), PBX1, 0.2)
    assert [m.status for m in to(ok, CALLER.remote) if isinstance(m, Response)] == [200]
    # A new call gets 503 with Retry-After and a Warning at once; nothing goes to a target.
    second = core.receive_datagram(invite().replace(b"caller1", b"caller2"), CALLER, 0.3)
    replies = to(second, CALLER.remote)
    assert [m.status for m in replies if isinstance(m, Response)] == [503]
    assert replies[0].headers.get("Retry-After") == "5"
    assert "Server overloaded" in (replies[0].headers.get("Warning") or "")
    assert to(second, ("192.0.2.20", 5060)) == []
    stats = core.statistics()
    assert stats.overloaded and stats.shed == 1
    assert stats.calls[("gw1", "", "", "shed_503")] == 1
    # Over again: new calls are routed.
    core.set_overloaded(False)
    third = core.receive_datagram(invite().replace(b"caller1", b"caller3"), CALLER, 0.4)
    assert [m.method for m in to(third, ("192.0.2.20", 5060)) if isinstance(m, Request)] == [
        "INVITE"
    ]


def test_while_a_backlog_waits_every_new_call_is_shed_then_the_share_again() -> None:
    """Overloaded with a share of 0.25: one new call in four is shed; with a backlog behind
    the messages (the shell says so), all of them, until the backlog is gone."""
    core, _out = start()
    core.set_overloaded(True, 0.25)

    def statuses(first: int, count: int) -> list[int]:
        found = []
        for n in range(first, first + count):
            request = invite().replace(b"caller1", f"caller{n}".encode())
            replies = to(core.receive_datagram(request, CALLER, 1.0 + n / 100), CALLER.remote)
            found += [m.status for m in replies if isinstance(m, Response)]
        return found

    assert statuses(10, 8).count(503) == 2
    core.set_backlogged(True)
    assert statuses(20, 8) == [503] * 8
    core.set_backlogged(False)
    assert statuses(30, 8).count(503) == 2
    core.set_backlogged(True)
    core.set_overloaded(False)  # out of overload: a backlog alone sheds nothing
    core.set_backlogged(True)
    assert 503 not in statuses(40, 4)


def down_pbx1(health_check: float = 10.0) -> tuple[SipCore, str]:
    """A core whose pbx1 was marked down by its health checks."""
    text = (
        table("server", {"fqdn": "sip.example.test"})
        + table("routing", {"down_after_failures": 1})
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
        + peer("pbx1", addresses=["192.0.2.20"], transport="udp", health_check=health_check)
        + dial_plan("lobby", "unsecured", ["pbx1"])
    )
    core = SipCore(parse_config(text))
    core.handle_timers(0.0)
    core.handle_timers(32.0)  # Timer F: no answer, down
    assert not core.health.is_up(core.config.peer("pbx1"))
    refused = to(core.receive_datagram(invite(), CALLER, 33.0), CALLER.remote)
    assert [m.status for m in refused if isinstance(m, Response)] == [503]
    core.take_events()
    return core, text


def test_a_reload_that_turns_health_checks_off_brings_the_target_back() -> None:
    core, text = down_pbx1()
    core.configure(parse_config(text.replace("health_check = 10.0", "health_check = 0")))
    assert core.health.is_up(core.config.peer("pbx1"))
    (change,) = [e.fields() for e in core.take_events() if e.log_name == "target_health_changed"]
    assert change["state"] == "up" and "health checks are off" in change["reason"]
    call = core.receive_datagram(invite().replace(b"caller1", b"caller2"), CALLER, 34.0)
    assert [m.method for m in to(call, ("192.0.2.20", 5060)) if isinstance(m, Request)] == [
        "INVITE"
    ]


def test_a_reload_that_moves_the_target_checks_it_afresh_and_an_unchanged_one_stays_down() -> None:
    core, text = down_pbx1()
    core.configure(parse_config(text))  # the same file again
    assert not core.health.is_up(core.config.peer("pbx1"))
    moved = text.replace('addresses = ["192.0.2.20"]', 'addresses = ["192.0.2.30"]')
    assert moved != text
    core.configure(parse_config(moved))
    assert core.health.is_up(core.config.peer("pbx1"))
    assert core.next_deadline() == float("-inf")  # pinged at once at its new address
    pings = [t for t in core.handle_timers(34.0) if parse(t).cseq[1] == "OPTIONS"]
    assert [t.flow.remote for t in pings] == [("192.0.2.30", 5060)]  # the old one abandoned


def test_a_failed_flow_fails_only_the_attempts_sent_on_it() -> None:
    core, out = start()
    flow_to_pbx1 = next(t.flow for t in out if t.flow.remote == ("192.0.2.20", 5060))
    assert core.transport_failed(PBX2, "connection refused", 0.1) == []  # nothing went there
    assert core.client_kinds_on(flow_to_pbx1) == ["forward"]
    out = core.transport_failed(flow_to_pbx1, "connection refused", 0.2)
    assert [m.method for m in to(out, ("192.0.2.21", 5060)) if isinstance(m, Request)] == ["INVITE"]
    assert core.client_kinds_on(flow_to_pbx1) == []
