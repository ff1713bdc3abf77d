"""The pure server core: what each request gets back, with time injected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.config.loader import parse_config
from sipserver.config.schema import Config
from sipserver.proxy.core import SipCore
from sipserver.sip.flow import Flow, Transport
from sipserver.sip.framing import FramingError
from sipserver.sip.message import Response, parse_message
from tests.configs import peer, table

GATEWAY_ADDRESSES = ["192.0.2.10", "2001:db8::/64"]


def config_text(addresses: list[str] = GATEWAY_ADDRESSES, **server: object) -> str:
    return (
        table("server", {"fqdn": "sip.example.test", "addresses": ["127.0.0.1"], **server})
        + table(
            "tls", {"certificate_dir": "/nonexistent/server", "trust_dir": "/nonexistent/trust"}
        )
        + peer("gw1", kind="gateway", addresses=addresses, health_check=None)
    )


GW = Flow(Transport.UDP, ("127.0.0.1", 5060), ("192.0.2.10", 40000))
STRANGER = Flow(Transport.UDP, ("127.0.0.1", 5060), ("198.51.100.7", 40000))


def config(**server: object) -> Config:
    return parse_config(config_text(GATEWAY_ADDRESSES, **server))


def req(
    method: str = "OPTIONS",
    uri: str = "sip:sip.example.test",
    *,
    extra: str = "",
    drop: str = "",
    branch: str = "z9hG4bK1",
    cseq_method: str | None = None,
) -> bytes:
    headers = [
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch};rport",
        "From: <sip:gw1@gw1.example.test>;tag=a",
        "To: <sip:sip.example.test>",
        "Call-ID: call-1@gw1",
        f"CSeq: 1 {cseq_method or method}",
        "Max-Forwards: 70",
    ]
    headers = [h for h in headers if not (drop and h.startswith(drop + ":"))]
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        + "\r\n".join(headers)
        + "\r\n"
        + extra
        + "Content-Length: 0\r\n\r\n"
    )
    return text.encode()


def answer(core: SipCore, data: bytes, flow: Flow = GW, now: float = 0.0) -> Response:
    out = core.receive_datagram(data, flow, now)
    assert len(out) == 1, out
    message = parse_message(out[0].data)
    assert isinstance(message, Response)
    return message


def test_options_to_the_server_gets_200_with_capabilities() -> None:
    response = answer(SipCore(config()), req())
    assert response.status == 200
    for name in ("Allow", "Accept", "Supported", "Server"):
        assert name in response.headers
    assert "INVITE" in (response.headers.get("Allow") or "")
    assert response.to is not None and response.to.tag
    assert response.call_id == "call-1@gw1"


def test_response_goes_to_source_ip_and_rport_with_received_stamped() -> None:
    core = SipCore(config())
    flow = Flow(Transport.UDP, ("127.0.0.1", 5060), ("192.0.2.10", 40001))
    out = core.receive_datagram(req(), flow, 0.0)
    assert out[0].flow.remote == ("192.0.2.10", 40001)
    via = parse_message(out[0].data).top_via
    assert (
        via is not None
        and via.params["rport"] == "40001"
        and via.params["received"] == "192.0.2.10"
    )


def test_without_rport_the_answer_goes_to_the_via_port() -> None:
    core = SipCore(config())
    data = req().replace(b";rport", b"")
    out = core.receive_datagram(data, GW, 0.0)
    assert out[0].flow.remote == ("192.0.2.10", 5062)


def test_unknown_source_gets_403_with_a_warning_that_explains() -> None:
    response = answer(SipCore(config()), req(), STRANGER)
    assert response.status == 403
    warning = response.headers.get("Warning") or ""
    assert warning.startswith('399 sip.example.test "Source address 198.51.100.7')


def test_unknown_source_can_be_dropped() -> None:
    core = SipCore(config(unknown_source="drop"))
    assert core.receive_datagram(req(), STRANGER, 0.0) == []
    assert core.receive_datagram(req(drop="Call-ID"), STRANGER, 0.0) == []


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (req(drop="Call-ID"), 400, "Missing Call-ID"),
        (req(drop="CSeq"), 400, "Missing CSeq"),
        (req(drop="From"), 400, "Missing From"),
        (req(cseq_method="INVITE"), 400, "CSeq method does not match the Request-Line"),
        (req().replace(b"CSeq: 1", b"CSeq: x"), 400, "Malformed CSeq"),
        (req(uri="tel:+14255550100"), 416, "Unsupported URI Scheme 'tel'"),
        (req(uri="sip:a@[::1"), 400, "Malformed Request-URI"),
        (req(method="FOO"), 501, "Not Implemented"),
        (req().replace(b"SIP/2.0\r\n", b"SIP/2.1\r\n", 1), 505, "Version Not Supported"),
    ],
)
def test_bad_requests_get_a_status_whose_reason_names_the_problem(
    data: bytes, status: int, reason: str
) -> None:
    response = answer(SipCore(config()), data)
    assert (response.status, response.reason) == (status, reason)


def test_unknown_require_gets_420_with_unsupported() -> None:
    response = answer(SipCore(config()), req(extra="Require: 100rel, foo\r\n"))
    assert response.status == 420
    assert response.headers.get("Unsupported") == "100rel, foo"


def test_request_that_would_be_forwarded_with_max_forwards_zero_gets_483() -> None:
    data = req("INVITE", "sip:+14255550100@sip.example.test").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0"
    )
    assert answer(SipCore(config()), data).status == 483


def test_invite_without_dial_plan_gets_404_naming_number_and_peer() -> None:
    response = answer(SipCore(config()), req("INVITE", "sip:+14255550100@sip.example.test"))
    assert response.status == 404
    assert "+14255550100" in (response.headers.get("Warning") or "")
    assert "gw1" in (response.headers.get("Warning") or "")


def test_invite_final_is_retransmitted_on_udp_until_ack() -> None:
    core = SipCore(config())
    invite = req("INVITE", "sip:+1@sip.example.test")
    first = core.receive_datagram(invite, GW, 0.0)
    assert core.next_deadline() == 0.5
    assert [t.data for t in core.handle_timers(0.5)] == [first[0].data]  # Timer G
    assert [t.data for t in core.receive_datagram(invite, GW, 0.7)] == [first[0].data]
    ack = req("ACK", "sip:+1@sip.example.test")
    assert core.receive_datagram(ack, GW, 0.8) == []
    assert core.handle_timers(1.5) == []  # confirmed: no more retransmissions
    core.handle_timers(0.8 + 5.0)  # Timer I
    assert core.transaction_count == 0 and core.next_deadline() is None


def test_retransmitted_options_gets_the_same_answer_and_transaction_ends_with_timer_j() -> None:
    core = SipCore(config())
    first = core.receive_datagram(req(), GW, 0.0)
    # Answered: only the key, the response bytes and where they go wait out Timer J.
    assert core.transactions().server == 0 and core.transactions().settled == 1
    assert core.next_deadline() == 32.0
    again = core.receive_datagram(req(), GW, 1.0)
    assert first[0].data == again[0].data and again[0].flow == first[0].flow
    assert core.transaction_count == 1
    core.handle_timers(32.0)
    assert core.transaction_count == 0 and core.next_deadline() is None
    core.take_events()
    fresh = core.receive_datagram(req(), GW, 33.0)  # a new transaction, answered again
    assert [e.log_name for e in core.take_events()] == ["sip_request_answered"]
    answered = parse_message(fresh[0].data)
    assert isinstance(answered, Response) and answered.status == 200


def test_options_over_tcp_leave_nothing_behind() -> None:
    core = SipCore(config())
    tcp = Flow(Transport.TCP, ("127.0.0.1", 5060), ("192.0.2.10", 40000))
    out = core.receive_stream_message(req().replace(b"UDP", b"TCP"), tcp, None, 0.0)
    answered = parse_message(out[0].data)
    assert isinstance(answered, Response) and answered.status == 200
    assert core.transaction_count == 0 and not core.transactions().settled


def test_cancel_without_pending_invite_gets_481() -> None:
    assert answer(SipCore(config()), req("CANCEL", "sip:+1@sip.example.test")).status == 481


def test_malformed_response_and_ack_are_dropped_not_answered() -> None:
    core = SipCore(config())
    assert core.receive_datagram(b"SIP/2.0 200 OK\r\nVia: broken\r\n\r\n", GW, 0.0) == []
    assert core.receive_datagram(req("ACK", drop="Call-ID"), GW, 0.0) == []
    assert core.receive_datagram(b"\r\n\r\n", GW, 0.0) == []


def test_request_without_via_cannot_be_answered_and_is_dropped() -> None:
    assert SipCore(config()).receive_datagram(req(drop="Via"), GW, 0.0) == []


def test_lost_framing_answers_the_head_then_closes() -> None:
    core = SipCore(config())
    flow = Flow(Transport.TCP, ("127.0.0.1", 5060), ("192.0.2.10", 40000), connection_id=7)
    head = req().split(b"\r\nContent-Length")[0]
    out = core.framing_lost(FramingError("Missing Content-Length", 400, head), flow)
    assert out[0].close_after and out[0].flow == flow
    response = parse_message(out[0].data)
    assert isinstance(response, Response) and response.reason == "Missing Content-Length"


def test_reconfigure_changes_who_is_known() -> None:
    core = SipCore(config())
    assert answer(core, req(), STRANGER).status == 403
    core.configure(parse_config(config_text([*GATEWAY_ADDRESSES, "198.51.100.7"])))
    assert answer(core, req(branch="z9hG4bK2"), STRANGER).status == 200


VALID = (
    b"INVITE sip:+14255550100@sip.example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKfuzz;rport\r\n"
    b"From: <sip:gw1@gw1.example.test>;tag=a\r\nTo: <sip:+14255550100@sip.example.test>\r\n"
    b"Call-ID: fuzz@gw1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b"Content-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\nm=x\r\n"
)


@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.binary(min_size=0, max_size=4)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["udp", "tcp"]),
)
@settings(max_examples=300, deadline=None)
def test_mutated_messages_never_escape_the_core_as_anything_but_answers(
    edits: list[tuple[int, bytes]], transport: str
) -> None:
    """PROTOS-style: bytes replaced, inserted or cut anywhere in a valid INVITE. The core
    answers, drops or routes; it never raises."""
    data = bytearray(VALID)
    for position, replacement in edits:
        position = min(position, len(data))
        data[position : position + len(replacement) or position + 1] = replacement
    core = SipCore(config())
    flow = Flow(Transport(transport), ("127.0.0.1", 5060), ("192.0.2.10", 40000), connection_id=1)
    if transport == "udp":
        out = core.receive_datagram(bytes(data), flow, 0.0)
    else:
        out = core.receive_stream_message(bytes(data), flow, None, 0.0)
    for transmit in out:
        assert transmit.data == b"" or transmit.data.startswith(
            (b"SIP/2.0 ", b"INVITE ", b"CANCEL ")
        )
    core.handle_timers(40.0)  # and its timers run without error too
