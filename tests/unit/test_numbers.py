"""Numbers in SIP are ASCII digits (RFC 3261's DIGIT): every numeric header and parameter a
peer sends, given other scripts' digits ('²', '٣٠٠'), signs, spaces or thousands of
digits, gets a 400 naming the field (or is dropped where the RFC says so), never an
internal error and never a number read from something that is not one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.proxy.core import SipCore
from sipserver.sip.flow import Flow, Transport
from sipserver.sip.framing import FramingError, StreamFramer
from sipserver.sip.message import ParseLimits, Response, parse_message
from sipserver.sip.numbers import ascii_int
from tests.unit.test_registrar import config, register

PHONE = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.50", 5062))
GW = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.10", 5060))

other_scripts = st.text(
    st.characters(categories=["Nd", "No"], exclude_characters="0123456789"), min_size=1
)
not_digits = st.one_of(
    other_scripts,
    st.from_regex(r"[+-][0-9]{1,4}", fullmatch=True),
    st.just("3 00"),
    st.just("0x10"),
)
huge = st.text("0123456789", min_size=13, max_size=5000).map(lambda digits: "1" + digits)
not_a_number = st.one_of(not_digits, huge)


def test_ascii_int_takes_ascii_digits_only() -> None:
    assert ascii_int("300") == 300 and ascii_int(b"42", 2) == 42
    for text in ("", "²", "٣٠٠", "+1", "-1", " 1", "1e3", "12345678901"):
        assert ascii_int(text) is None, text


@given(st.one_of(st.text(max_size=12), st.binary(max_size=12)), st.integers(1, 12))
def test_a_remembered_number_reads_as_it_did_the_first_time(
    text: str | bytes, max_digits: int
) -> None:
    digits = text if isinstance(text, str) else text.decode("latin-1")
    expected = (
        int(digits)
        if digits and len(digits) <= max_digits and all("0" <= c <= "9" for c in digits)
        else None
    )
    assert ascii_int(text, 12) == ascii_int(text, 12)  # asked again: remembered
    assert ascii_int(text, max_digits) == expected  # a bound tighter than before still holds


def options(
    cseq: str = "1", max_forwards: str = "70", via_params: str = ";rport", branch: str = "1"
) -> bytes:
    return (
        "OPTIONS sip:sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnum{branch}{via_params}\r\n"
        "From: <sip:gw@gw1.example.test>;tag=a\r\nTo: <sip:sip.example.test>\r\n"
        f"Call-ID: numbers\r\nCSeq: {cseq} OPTIONS\r\nMax-Forwards: {max_forwards}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(core: SipCore, data: bytes, flow: Flow = GW) -> Response | None:
    out = core.receive_datagram(data, flow, 0.0)
    if not out:
        return None
    message = parse_message(out[-1].data)
    assert isinstance(message, Response)
    return message


@settings(max_examples=60, deadline=None)
@given(value=not_a_number)
def test_cseq_and_max_forwards_that_are_not_numbers_get_400(value: str) -> None:
    core = SipCore(config())
    refused = answer(core, options(cseq=value))
    assert refused is None or refused.status == 400  # unanswerable without a CSeq: dropped
    refused = answer(core, options(max_forwards=value, branch="2"))
    assert refused is not None and refused.status == 400, value
    assert "Max-Forwards" in refused.reason


@settings(max_examples=60, deadline=None)
@given(value=not_a_number)
def test_an_rport_that_is_not_a_number_is_not_used(value: str) -> None:
    core = SipCore(config())
    out = core.receive_datagram(options(via_params=f";rport={value}"), GW, 0.0)
    assert out and all(t.flow.remote == ("192.0.2.10", 5060) for t in out)


@settings(max_examples=60, deadline=None)
@given(value=not_digits)
def test_expires_and_reg_id_that_are_not_numbers_get_400(value: str) -> None:
    core = SipCore(config())
    for data in (
        register(expires=value, transport="UDP"),
        register(contact=f"<sip:7001@192.0.2.50:5062>;expires={value}", transport="UDP"),
        register(
            contact=f'<sip:7001@192.0.2.50:5062;ob>;+sip.instance="<urn:x>";reg-id={value}',
            transport="UDP",
            extra="Supported: outbound\r\n",
        ),
    ):
        refused = answer(core, data, PHONE)
        assert refused is not None and refused.status == 400, (value, refused)
    assert core.bindings_by_number() == {}  # nothing was registered with a number read from it


@settings(max_examples=20, deadline=None)
@given(value=huge)
def test_a_huge_expires_is_as_long_as_allowed_and_a_huge_reg_id_is_refused(value: str) -> None:
    core = SipCore(config())
    granted = answer(core, register(expires=value, transport="UDP"), PHONE)
    assert granted is not None and granted.status == 200
    assert "expires=600" in (granted.headers.get("Contact") or "")  # registrar.max_expires
    outbound = register(
        contact=f'<sip:7001@192.0.2.50:5062;ob>;+sip.instance="<urn:x>";reg-id={value}',
        transport="UDP",
        extra="Supported: outbound\r\n",
        call_id="reg-2",
    )
    refused = answer(core, outbound, PHONE)
    assert refused is not None and refused.status == 400


def test_an_expires_in_another_script_is_not_300() -> None:
    core = SipCore(config())
    refused = answer(core, register(expires="٣٠٠", transport="UDP"), PHONE)
    assert refused is not None and refused.status == 400
    assert "ASCII digits" in refused.reason or "Malformed" in refused.reason


@settings(max_examples=60, deadline=None)
@given(value=not_a_number)
def test_a_content_length_that_is_not_a_number_is_refused_in_both_framings(value: str) -> None:
    head = f"OPTIONS sip:x SIP/2.0\r\nContent-Length: {value}\r\n\r\n".encode()
    framer = StreamFramer(ParseLimits(65535, 256, 8192))
    try:
        framer.feed(head)
    except FramingError as exc:
        assert exc.status in (400, 513)
    else:
        raise AssertionError("framed a message with no usable Content-Length")
    core = SipCore(config())
    refused = answer(
        core, options().replace(b"Content-Length: 0", f"Content-Length: {value}".encode())
    )
    assert refused is not None and refused.status == 400
