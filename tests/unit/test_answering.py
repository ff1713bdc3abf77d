"""The built-in answering target in the pure core: ringing, the SDP answer in each mode,
the dialog (ACK, BYE, re-INVITE, CANCEL before the answer) and the hang-up timer, with
injected time and no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from sipserver.config.loader import ConfigError, parse_config
from sipserver.proxy.core import SipCore
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Request, Response, parse_message
from sipserver.sip.sdp import parse_sdp, srtp_violations
from tests.configs import answer_plan, dial_plan, peer, table

SERVER = table("server", {"fqdn": "sip.example.test", "sip_port": 5060, "tls_port": 5061})
GW1 = peer("gw1", kind="gateway", addresses=["192.0.2.10"])
UDP = Flow(Transport.UDP, ("192.0.2.1", 5060), ("192.0.2.10", 5062))
TLS = Flow(Transport.TLS, ("192.0.2.1", 5061), ("192.0.2.10", 40000), connection_id=7)

AVP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
SAVP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
)


def core_for(security: str, **plan: Any) -> SipCore:
    return SipCore(parse_config(SERVER + GW1 + answer_plan(security, **plan)))


def invite(
    body: bytes = AVP,
    *,
    transport: str = "UDP",
    method: str = "INVITE",
    to_tag: str = "",
    cseq: int = 1,
    branch: str = "z9hG4bKinv",
) -> bytes:
    to = "<sip:5000@sip.example.test>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:5000@sip.example.test SIP/2.0\r\nVia: SIP/2.0/{transport} 192.0.2.10:5062;branch={branch}\r\n"
        f"From: <sip:a@gw1.example.test>;tag=caller\r\nTo: {to}\r\nCall-ID: call-1\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <sip:a@192.0.2.10:5062;transport={transport.lower()}>\r\nMax-Forwards: 70\r\n"
    )
    typed = "Content-Type: application/sdp\r\n" if body else ""
    return (head + typed + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def replies(out: list[Transmit]) -> list[Response]:
    messages = [parse_message(t.data) for t in out]
    return [m for m in messages if isinstance(m, Response)]


def to_tag(response: Response) -> str:
    """Our To-tag on a response (every answer of ours has one)."""
    assert response.to is not None and response.to.tag is not None
    return response.to.tag


def requests(out: list[Transmit]) -> list[Request]:
    messages = [parse_message(t.data) for t in out]
    return [m for m in messages if isinstance(m, Request)]


def test_rings_then_answers_with_plain_rtp_at_the_discard_port_and_logs_the_call() -> None:
    core = core_for("unsecured", answer_after=2.0)
    out = replies(core.receive_datagram(invite(), UDP, 0.0))
    assert [r.status for r in out] == [180]
    tag = out[0].to.tag  # type: ignore[union-attr]
    assert core.next_deadline() == 2.0
    (ok,) = replies(core.handle_timers(2.0))
    assert ok.status == 200 and ok.to.tag == tag  # type: ignore[union-attr]
    assert ok.headers.get("Contact") == "<sip:5000@sip.example.test:5060;transport=udp>"
    sdp = parse_sdp(ok.body)
    assert [(m.port, m.proto, m.formats) for m in sdp.media] == [(9, "RTP/AVP", ("0",))]
    assert b"c=IN IP4 192.0.2.1" in ok.body
    (answered,) = [e.fields() for e in core.take_events() if e.log_name == "call_answered"]
    assert answered["dial_plan"] == "echo" and answered["number"] == "5000"
    assert answered["media"] == ["audio RTP/AVP"] and answered["setup_ms"] == 2000.0
    assert core.statistics().calls[("gw1", "echo", "unsecured", "answered_here")] == 1


def test_secured_answers_srtp_with_a_key_of_its_own_and_refuses_plain_rtp() -> None:
    core = core_for("secured", answer_after=0)
    out = core.receive_stream_message(
        invite(SAVP, transport="TLS"), TLS, core.config.peer("gw1"), 0.0
    )
    ok = replies(out)[-1]
    assert ok.status == 200
    sdp = parse_sdp(ok.body)
    assert srtp_violations(sdp) == []
    (crypto,) = [v for n, v in sdp.media[0].attributes if n == "crypto"]
    assert crypto and crypto.startswith("1 AES_CM_128_HMAC_SHA1_80 inline:")
    assert crypto not in SAVP.decode()  # our own key, not the caller's
    plain = core.receive_stream_message(
        invite(AVP, transport="TLS", branch="z9hG4bKplain").replace(b"call-1", b"call-2"),
        TLS,
        core.config.peer("gw1"),
        1.0,
    )
    refused = replies(plain)
    assert [r.status for r in refused] == [488]
    assert "requires SRTP" in (refused[0].headers.get("Warning") or "")


def test_an_offer_it_cannot_answer_gets_488_saying_why() -> None:
    dtls = AVP.replace(b"RTP/AVP", b"UDP/TLS/RTP/SAVP")
    core = core_for("unsecured")
    (refused,) = replies(core.receive_datagram(invite(dtls), UDP, 0.0))
    assert refused.status == 488
    assert "UDP/TLS/RTP/SAVP is not answered" in (refused.headers.get("Warning") or "")


def test_udp_2xx_is_resent_until_the_ack_then_bye_ends_the_call() -> None:
    core = core_for("unsecured", answer_after=0)
    sent = core.receive_datagram(invite(), UDP, 0.0)
    ok = replies(sent)[-1]
    assert ok.to is not None and ok.to.tag is not None
    tag = ok.to.tag
    assert [t.data for t in core.handle_timers(0.5)] == [sent[-1].data]  # T1, no ACK yet
    assert [t.data for t in core.handle_timers(1.5)] == [sent[-1].data]  # 2*T1 later
    ack = invite(b"", method="ACK", to_tag=tag, branch="z9hG4bKack")
    assert core.receive_datagram(ack, UDP, 0.7) == []
    assert [t for t in core.handle_timers(3.5) if b"200 OK" in t.data] == []  # no more
    bye = invite(b"", method="BYE", to_tag=tag, cseq=2, branch="z9hG4bKbye")
    assert [r.status for r in replies(core.receive_datagram(bye, UDP, 5.0))] == [200]
    (ended,) = [e.fields() for e in core.take_events() if e.log_name == "answered_call_ended"]
    assert ended["ended_by"] == "caller_bye" and ended["duration_s"] == 5.0
    assert not core.transactions().answered_calls


def test_reinvite_gets_a_new_answer_and_a_secured_call_refuses_plain_rtp_in_dialog() -> None:
    core = core_for("secured", answer_after=0)
    gw1 = core.config.peer("gw1")
    ok = replies(core.receive_stream_message(invite(SAVP, transport="TLS"), TLS, gw1, 0.0))[-1]
    assert ok.to is not None and ok.to.tag is not None
    tag = ok.to.tag
    core.receive_stream_message(
        invite(b"", method="ACK", transport="TLS", to_tag=tag, branch="z9hG4bKa"), TLS, gw1, 0.1
    )
    again = invite(SAVP, transport="TLS", to_tag=tag, cseq=2, branch="z9hG4bKre")
    (re_ok,) = replies(core.receive_stream_message(again, TLS, gw1, 1.0))
    assert re_ok.status == 200 and b"o=sipserver" in re_ok.body
    assert parse_sdp(re_ok.body) and b" 2 IN IP4" in re_ok.body  # the session version moved on
    plain = invite(AVP, transport="TLS", to_tag=tag, cseq=3, branch="z9hG4bKre2")
    (refused,) = replies(core.receive_stream_message(plain, TLS, gw1, 2.0))
    assert refused.status == 488


def test_cancel_before_the_answer_gets_487_and_no_answer_follows() -> None:
    core = core_for("unsecured", answer_after=30.0)
    (ringing,) = replies(core.receive_datagram(invite(), UDP, 0.0))
    cancel = invite(b"", method="CANCEL")
    out = replies(core.receive_datagram(cancel, UDP, 1.0))
    assert sorted((r.status, r.cseq[1]) for r in out) == [(200, "CANCEL"), (487, "INVITE")]
    assert out[-1].to.tag == ringing.to.tag  # type: ignore[union-attr]
    (ended,) = [e.fields() for e in core.take_events() if e.log_name == "answered_call_ended"]
    assert ended["ended_by"] == "cancelled" and ended["duration_s"] is None
    assert [r for r in replies(core.handle_timers(30.0)) if r.status == 200] == []
    assert core.busy() == 0


@pytest.mark.parametrize("flow", [UDP, TLS], ids=["udp", "tls"])
def test_hangs_up_by_itself_after_answer_hangup_after(flow: Flow) -> None:
    core = core_for("unsecured", answer_after=0, answer_hangup_after=10.0)
    gw1 = core.config.peer("gw1")
    transport = flow.transport.upper()
    raw = invite(transport=transport)
    out = (
        core.receive_datagram(raw, flow, 0.0)
        if flow is UDP
        else core.receive_stream_message(raw, flow, gw1, 0.0)
    )
    tag = to_tag(replies(out)[-1])
    ack = invite(b"", method="ACK", transport=transport, to_tag=tag, branch="z9hG4bKack")
    core.receive_datagram(ack, flow, 0.1) if flow is UDP else core.receive_stream_message(
        ack, flow, gw1, 0.1
    )
    sent = core.handle_timers(10.0)
    (bye,) = requests(sent)
    assert sent[0].flow == (UDP if flow is UDP else TLS)
    assert bye.method == "BYE" and bye.uri == f"sip:a@192.0.2.10:5062;transport={flow.transport}"
    assert bye.from_.tag == tag and bye.to.tag == "caller"  # type: ignore[union-attr]
    (ended,) = [e.fields() for e in core.take_events() if e.log_name == "answered_call_ended"]
    assert ended["ended_by"] == "hangup_timer" and ended["duration_s"] == 10.0


def test_an_answer_plan_with_targets_or_a_proxy_plan_without_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="list no targets"):
        parse_config(
            SERVER + GW1 + peer("pbx1") + dial_plan("x", "unsecured", ["pbx1"], action="answer")
        )
    with pytest.raises(ConfigError, match='set action = "answer"'):
        parse_config(SERVER + GW1 + dial_plan("x", "unsecured", []))


def test_no_ack_within_64_t1_ends_the_call_with_a_bye() -> None:
    core = core_for("unsecured", answer_after=0)
    core.receive_datagram(invite(), UDP, 0.0)
    sent: list[Transmit] = []
    deadline = core.next_deadline()
    while deadline is not None and deadline <= 40.0:
        sent += core.handle_timers(deadline)
        deadline = core.next_deadline()
    assert {r.method for r in requests(sent)} == {"BYE"}  # and Timer E resends it
    (ended,) = [e.fields() for e in core.take_events() if e.log_name == "answered_call_ended"]
    assert ended["ended_by"] == "no_ack" and ended["duration_s"] == 32.0


def test_a_call_nobody_hangs_up_ends_after_a_day_and_many_calls_cost_no_scan() -> None:
    core = core_for("unsecured", answer_after=0)
    for n in range(300):
        raw = invite(branch=f"z9hG4bKn{n}").replace(b"call-1", f"call-{n}".encode())
        tag = to_tag(replies(core.receive_datagram(raw, UDP, 0.0))[-1])
        ack = invite(b"", method="ACK", to_tag=tag, branch=f"z9hG4bKa{n}")
        core.receive_datagram(ack.replace(b"call-1", f"call-{n}".encode()), UDP, 0.1)
    assert core.transactions().answered_calls == 300
    assert (
        core.transactions().answering_wakeups <= 2 * 300 + 256
    )  # ended and moved wake-ups dropped
    core.take_events()
    core.handle_timers(86400.0)
    ended = [e.fields() for e in core.take_events() if e.log_name == "answered_call_ended"]
    assert len(ended) == 300 and {e["ended_by"] for e in ended} == {"longest_call"}
    assert not core.transactions().answered_calls


def test_a_bye_in_the_early_dialog_ends_the_ringing_invite_with_487() -> None:
    core = core_for("unsecured", answer_after=30.0)
    (ringing,) = replies(core.receive_datagram(invite(), UDP, 0.0))
    tag = to_tag(ringing)
    bye = invite(b"", method="BYE", to_tag=tag, cseq=2, branch="z9hG4bKbye")
    out = replies(core.receive_datagram(bye, UDP, 1.0))
    assert sorted((r.status, r.cseq[1]) for r in out) == [(200, "BYE"), (487, "INVITE")]
    assert core.busy() == 0 and not core.transactions().answered_calls
    assert [r for r in replies(core.handle_timers(30.0)) if r.status == 200] == []
