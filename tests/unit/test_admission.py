"""Call admission control in the pure core: calls in progress per peer, per dial plan and
per server, a peer's call rate (token bucket); 503 + Retry-After with a Warning naming the
limit; counts that return to zero however a call ends; a reload that lowers a limit."""

from __future__ import annotations

from typing import Any

from sipserver.config.loader import parse_config
from sipserver.proxy.core import SipCore
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Request, Response
from tests.configs import dial_plan, peer, table
from tests.unit.test_proxy import PBX1, answer, parse


def config(
    gw1: dict[str, Any] | None = None,
    plan: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> str:
    return (
        table("server", {"fqdn": "sip.example.test", "sip_port": 5060, "tls_port": 5061})
        + (table("limits", limits) if limits else "")
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None, **(gw1 or {}))
        + peer("gw2", kind="gateway", addresses=["192.0.2.11"], health_check=None)
        + peer("pbx1", addresses=["192.0.2.20"], transport="udp", health_check=None)
        + dial_plan("trunk", "unsecured", ["pbx1"], from_=["gw1", "gw2"], **(plan or {}))
        + dial_plan("echo", "unsecured", [], numbers=["7xxx"], from_=["gw1"], action="answer")
    )


CALLER = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.10", 5060))
GW2 = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.11", 5060))


def invite(n: int, flow: Flow = CALLER, number: str = "5000") -> bytes:
    host = flow.remote[0]
    return (
        f"INVITE sip:{number}@sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bKadm{n}\r\n"
        f"From: <sip:a@gw.example.test>;tag=f{n}\r\nTo: <sip:{number}@sip.example.test>\r\n"
        f"Call-ID: adm-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{host}:5060>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def final(out: list[Transmit], flow: Flow = CALLER) -> Response | None:
    finals = [
        m for t in out if t.flow.remote == flow.remote
        if isinstance(m := parse(t), Response) and m.status >= 200
    ]  # fmt: skip
    return finals[-1] if finals else None


def forwarded(out: list[Transmit]) -> Request:
    (request,) = [
        m for t in out if t.flow.remote == PBX1.remote
        if isinstance(m := parse(t), Request) and m.method == "INVITE"
    ]  # fmt: skip
    return request


def reply(core: SipCore, request: Request, status: int, now: float) -> list[Transmit]:
    data = answer(request, status).replace(
        b"Call-ID: call-1", f"Call-ID: {request.call_id}".encode()
    )
    return core.receive_datagram(data, PBX1, now)


def test_a_peer_over_max_calls_gets_503_naming_the_limit_and_another_peer_does_not() -> None:
    core = SipCore(parse_config(config(gw1={"max_calls": 2})))
    for n in (1, 2):
        assert final(core.receive_datagram(invite(n), CALLER, 0.0)) is None  # ringing on
    refused = final(core.receive_datagram(invite(3), CALLER, 0.0))
    assert refused is not None and refused.status == 503
    assert refused.headers.get("Retry-After") == "30"
    assert "Peer gw1 has 2 calls in progress, its max_calls (2)" in (
        refused.headers.get("Warning") or ""
    )
    assert final(core.receive_datagram(invite(4, GW2), GW2, 0.0), GW2) is None  # gw2 goes on
    assert core.call_limits.by_peer == {"gw1": 2, "gw2": 1}
    assert core.call_limits.refused == {("peer_max_calls", "gw1"): 1}


def test_counts_return_to_zero_however_the_calls_end() -> None:
    core = SipCore(parse_config(config(gw1={"max_calls": 10})))
    # 1: refused by the target; 2: cancelled; 3: timed out (Timer C / B); 4: answered, then BYE;
    # 5: answered by the built-in target, then BYE.
    requests = {n: forwarded(core.receive_datagram(invite(n), CALLER, 0.0)) for n in (1, 2, 3, 4)}
    core.receive_datagram(invite(5, number="7000"), CALLER, 0.0)
    assert core.call_limits.active == 5
    reply(core, requests[1], 486, 0.1)
    cancel = invite(2).replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    core.receive_datagram(cancel, CALLER, 0.1)
    reply(core, requests[2], 180, 0.2)
    reply(core, requests[2], 487, 0.3)
    reply(core, requests[4], 200, 0.3)
    assert core.call_limits.active == 3  # 3 still trying, 4 and 5 in their dialogs
    bye = (
        b"BYE sip:b@192.0.2.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye4\r\n"
        b"Route: <sip:sip.example.test:5060;transport=udp;lr;peer=gw1>, <sip:sip.example.test:5060;transport=udp;lr;peer=pbx1>\r\n"
        b"From: <sip:a@gw.example.test>;tag=f4\r\nTo: <sip:5000@sip.example.test>;tag=callee\r\n"
        b"Call-ID: adm-4\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    (bye_out,) = [
        parse(t) for t in core.receive_datagram(bye, CALLER, 1.0) if t.flow.remote == PBX1.remote
    ]
    assert isinstance(bye_out, Request)
    reply(core, bye_out, 200, 1.1)
    out: list[Transmit] = []
    for now in (2.0, 40.0, 70.0, 200.0):  # the answering target's call ends, 3 times out
        out += core.handle_timers(now)
    assert core.call_limits.active == 0 and not core.call_limits.by_peer
    assert not core.call_limits.by_plan


def test_a_plan_and_the_server_have_their_own_limits() -> None:
    core = SipCore(parse_config(config(plan={"max_calls": 1}, limits={"max_calls": 2})))
    core.receive_datagram(invite(1), CALLER, 0.0)
    refused = final(core.receive_datagram(invite(2, GW2), GW2, 0.0), GW2)
    assert refused is not None and "Dial plan trunk has 1 calls in progress, its max_calls (1)" in (
        refused.headers.get("Warning") or ""
    )
    core.receive_datagram(invite(3, number="7000"), CALLER, 0.0)  # another plan: admitted
    refused = final(core.receive_datagram(invite(4, number="7001"), CALLER, 0.0))
    assert refused is not None and "(limits.max_calls 2)" in (refused.headers.get("Warning") or "")


def test_the_call_rate_is_a_token_bucket_with_its_burst() -> None:
    core = SipCore(parse_config(config(gw1={"max_call_rate": 2.0, "max_call_burst": 3})))
    statuses = []
    for n in range(20):  # 20 calls in 4 s: the burst, then 2 a second
        out = core.receive_datagram(invite(n), CALLER, n * 0.2)
        refused = final(out)
        statuses.append(refused.status if refused else 100)
    admitted = statuses.count(100)
    assert statuses[:4] == [100] * 4 and statuses[4:6] == [503, 503]  # the burst spent
    assert admitted == 10  # 3 at once, then 2 a second over 3.8 s: 10.6 tokens in all
    assert core.call_limits.refused[("peer_max_call_rate", "gw1")] == 20 - admitted


def test_a_reload_that_lowers_a_limit_keeps_the_calls_and_admits_none_until_under() -> None:
    core = SipCore(parse_config(config(gw1={"max_calls": 5})))
    requests = [forwarded(core.receive_datagram(invite(n), CALLER, 0.0)) for n in range(3)]
    core.configure(parse_config(config(gw1={"max_calls": 1})))
    refused = final(core.receive_datagram(invite(10), CALLER, 0.1))
    assert refused is not None and refused.status == 503
    assert core.call_limits.by_peer["gw1"] == 3  # nothing dropped
    reply(core, requests[0], 486, 0.2)
    reply(core, requests[1], 486, 0.2)
    assert final(core.receive_datagram(invite(11), CALLER, 0.3)) is not None  # still 1 >= 1
    reply(core, requests[2], 486, 0.4)
    assert final(core.receive_datagram(invite(12), CALLER, 0.5)) is None  # under: admitted


def test_a_ringing_call_that_timer_c_ends_is_no_longer_counted() -> None:
    """RFC 3261 §16.8: a call still ringing when Timer C fires gets 408; it counts no more,
    and the late 487 the callee sends counts nothing again."""
    core = SipCore(parse_config(config(gw1={"max_calls": 1})))
    request = forwarded(core.receive_datagram(invite(1), CALLER, 0.0))
    reply(core, request, 180, 1.0)
    refused = final(core.receive_datagram(invite(2), CALLER, 2.0))
    assert refused is not None and refused.status == 503  # the ringing call holds the limit
    timed_out = final(core.handle_timers(181.0))
    assert timed_out is not None and timed_out.status == 408
    assert core.call_limits.active == 0
    reply(core, request, 487, 181.2)
    assert core.call_limits.active == 0
    assert final(core.receive_datagram(invite(3), CALLER, 182.0)) is None  # admitted again
