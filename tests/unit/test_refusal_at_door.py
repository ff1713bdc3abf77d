"""Refusals at the door: a new call on a connection that overload sheds (every one during
a surge, the share otherwise) gets its 503 from its bytes alone, with what the full path's 503
carries, no transaction, and an ACK that is absorbed by its To-tag; anything unusual goes
the full way."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipserver.config.loader import parse_config
from sipserver.proxy.core import SipCore
from sipserver.proxy.events import CallShed
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Response, parse_message
from sipserver.sip.stateless import REFUSAL_TAG, acks_a_refusal, read_new_invite
from tests.configs import dial_plan, peer, table

CONFIG = parse_config(
    table("server", {"fqdn": "sip.example.test"})
    + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
    + peer("pbx1", addresses=["192.0.2.20"], transport="tcp", health_check=None)
    + dial_plan("lobby", "unsecured", ["pbx1"])
)
GW1 = Flow(Transport.TCP, ("192.0.2.1", 5060), ("192.0.2.10", 40312), connection_id=7)
STRANGER = Flow(Transport.TCP, ("192.0.2.1", 5060), ("198.51.100.9", 40999), connection_id=8)


def invite(n: int = 1, *, to_tag: str = "", via: str | None = None, extra: str = "") -> bytes:
    via = via or f"SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-{n};rport"
    return (
        f"INVITE sip:5000@sip.example.test SIP/2.0\r\nVia: {via}\r\n"
        "Via: SIP/2.0/UDP 10.0.0.4:5060;branch=z9hG4bK-below\r\n"
        f"From: <sip:a@gw1.example.test>;tag=from{n}\r\n"
        f"To: <sip:5000@sip.example.test>{to_tag}\r\nCall-ID: call-{n}@gw1\r\n"
        f"CSeq: 1 INVITE\r\nContact: <sip:a@10.0.0.5:5060>\r\nMax-Forwards: 70\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def ack(refusal: Response, n: int = 1) -> bytes:
    return (
        "ACK sip:5000@sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-{n};rport\r\n"
        f"From: <sip:a@gw1.example.test>;tag=from{n}\r\nTo: {refusal.headers.get('To')}\r\n"
        f"Call-ID: call-{n}@gw1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def surging() -> SipCore:
    core = SipCore(CONFIG)
    core.set_overloaded(True, 0.25)
    core.set_backlogged(True)
    return core


def only_response(out: list[Transmit], flow: Flow = GW1) -> Response:
    assert [t.flow for t in out] == [flow]
    message = parse_message(out[0].data)
    assert isinstance(message, Response)
    return message


def test_a_new_call_is_refused_from_its_bytes_with_what_the_full_path_would_say() -> None:
    core = surging()
    refused = only_response(core.receive_stream_message(invite(), GW1, None, 1.0))
    assert core.transaction_count == 0  # no transaction kept for it
    assert core.shed == 1
    events = core.take_events()
    assert [type(e) for e in events] == [CallShed]
    (shed,) = events
    assert isinstance(shed, CallShed)
    assert shed.call_id == "call-1@gw1" and shed.peer == "gw1"

    # The same INVITE from the same address and port over UDP, which the door leaves to
    # the full path: its 503 is what the door's must be.
    full_path = SipCore(CONFIG)
    full_path.set_overloaded(True, 1.0)
    udp = Flow(Transport.UDP, GW1.local, GW1.remote)
    expected = only_response(full_path.receive_datagram(invite(), udp, 1.0), udp)
    assert full_path.transaction_count == 1
    assert (refused.status, refused.reason) == (expected.status, expected.reason)
    names = [h.name for h in refused.headers]
    assert names == [h.name for h in expected.headers]
    for name in ("Via", "From", "Call-ID", "CSeq", "Retry-After", "Warning", "Server"):
        assert refused.headers.get_all(name) == expected.headers.get_all(name), name
    assert refused.headers.get("Via") == (
        "SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-1;rport=40312;received=192.0.2.10"
    )
    to = refused.headers.get("To") or ""
    assert to.startswith("<sip:5000@sip.example.test>;tag=" + REFUSAL_TAG)
    again = only_response(core.receive_stream_message(invite(), GW1, None, 1.5))
    assert again.headers.get("To") == to  # a retransmission gets the same tag


def test_the_share_shed_without_a_backlog_is_refused_at_the_door_too() -> None:
    """Overloaded with a share of one in two and no backlog: every other new call gets the
    door's 503, the others go on to pbx1 (the share's turns are taken once per call)."""
    core = SipCore(CONFIG)
    core.set_overloaded(True, 0.5)
    statuses = []
    for n in range(1, 7):
        out = core.receive_stream_message(invite(n), GW1, None, 1.0 + n)
        to_caller = [parse_message(t.data) for t in out if t.flow == GW1]
        refused = [m for m in to_caller if isinstance(m, Response) and m.status == 503]
        statuses.append("shed" if refused else "forwarded")
        if refused:
            assert REFUSAL_TAG in (refused[0].headers.get("To") or "")
        else:
            assert any(t.flow.remote[0] == "192.0.2.20" for t in out)
    assert statuses == ["forwarded", "shed"] * 3
    assert core.shed == 3


def test_the_ack_of_a_refusal_is_absorbed_even_after_the_surge() -> None:
    core = surging()
    refused = only_response(core.receive_stream_message(invite(), GW1, None, 1.0))
    assert acks_a_refusal(ack(refused))
    assert core.receive_stream_message(ack(refused), GW1, None, 1.1) == []
    core.set_overloaded(False)
    assert core.receive_stream_message(ack(refused), GW1, None, 9.0) == []
    assert core.transaction_count == 0


def test_in_dialog_and_unusual_requests_take_the_full_path() -> None:
    core = surging()
    # in a dialog: never shed
    out = core.receive_stream_message(invite(2, to_tag=";tag=callee"), GW1, None, 1.0)
    answers = [parse_message(t.data) for t in out if t.flow == GW1]
    assert not [m for m in answers if isinstance(m, Response) and m.status == 503]
    assert core.shed == 0
    # a Via list on one line, a folded header: shed, but by the full parser's transaction
    for n, request in (
        (3, invite(3, via="SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK-3, SIP/2.0/UDP 10.0.0.3")),
        (4, invite(4, extra="Subject: a\r\n folded line\r\n")),
    ):
        before = core.transaction_count
        refused = only_response(core.receive_stream_message(request, GW1, None, 1.0 + n))
        assert refused.status == 503
        assert core.transaction_count == before + 1
        assert REFUSAL_TAG not in (refused.headers.get("To") or "")
    # a stranger is told who may call, not that we are busy
    refused = only_response(core.receive_stream_message(invite(5), STRANGER, None, 2.0), STRANGER)
    assert refused.status == 403


def test_only_an_out_of_dialog_invite_is_read_at_the_door() -> None:
    assert read_new_invite(invite()) is not None
    assert read_new_invite(invite(to_tag=";tag=x")) is None
    assert read_new_invite(invite().replace(b"INVITE sip", b"OPTIONS sip")) is None
    assert read_new_invite(invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")) is None
    assert read_new_invite(invite().replace(b"Call-ID", b"X-Gone")) is None
    assert read_new_invite(invite(extra="To: <sip:other@x>\r\n")) is None  # two To headers
    compact = invite().replace(b"\r\nTo:", b"\r\nt:").replace(b"\r\nVia:", b"\r\nv:")
    assert read_new_invite(compact) is not None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_break_the_door(data: bytes) -> None:
    for candidate in (data, b"INVITE " + data, b"ACK " + data + b";tag=" + REFUSAL_TAG.encode()):
        read_new_invite(candidate)
        acks_a_refusal(candidate)
    surging().receive_stream_message(b"INVITE " + data, GW1, None, 1.0)
