"""Parser and serialiser: RFC 3261 §7 and §25 features, limits, and round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.headers import header_key
from sipserver.sip.message import ParseError, ParseLimits, Request, Response, parse_message
from sipserver.sip.sdp import parse_sdp, srtp_violations
from sipserver.sip.uri import parse_name_addr, parse_uri

SDP = (
    b"v=0\r\no=- 1 1 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/SAVP 0 8\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abcd\r\n"
    b"m=video 0 RTP/AVP 31\r\n"
)

INVITE = (
    b"INVITE sip:%2B14255550100@[2001:db8::1]:5061;transport=tls SIP/2.0\r\n"
    b"v: SIP/2.0/TLS [2001:db8::5]:5061;branch=z9hG4bK776asdhds , SIP/2.0/UDP gw1.example.test;branch=z9hG4bKold\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK3\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob, the callee" <sip:+14255550100@example.test>\r\n'
    b"f: Alice <sip:alice@gw1.example.test>\r\n ;tag=1928301774\r\n"
    b"i: a84b4c76e66710@gw1.example.test\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"X-Vendor-Thing:   keep   this   exactly  \r\n"
    b"Contact: <sip:alice@[2001:db8::5]:5061;transport=tls>, <sip:alice@192.0.2.1>\r\n"
    b"c: application/sdp\r\n"
    b"l: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def test_parses_compact_folded_repeated_and_ipv6_headers() -> None:
    message = parse_message(INVITE, stream=True)
    assert isinstance(message, Request)
    assert message.method == "INVITE"
    uri = parse_uri(message.uri)
    assert uri.user_unescaped == "+14255550100"
    assert uri.host == "2001:db8::1" and uri.port == 5061 and uri.transport == "tls"
    vias = message.vias
    assert [v.transport for v in vias] == ["TLS", "UDP", "TCP"]
    assert vias[0].host == "2001:db8::5" and vias[0].port == 5061
    assert vias[0].branch == "z9hG4bK776asdhds"
    assert message.call_id == "a84b4c76e66710@gw1.example.test"
    assert message.from_ is not None and message.from_.tag == "1928301774"  # folded line
    assert message.to is not None and message.to.display_name == '"Bob, the callee"'
    assert message.cseq == (314159, "INVITE")
    assert len(message.headers.get_all("Contact")) == 2
    assert message.headers.get("x-vendor-thing") == "keep   this   exactly"
    assert message.body == SDP


words = st.lists(st.from_regex(r"[a-z0-9;=<>@.]{1,8}", fullmatch=True), min_size=1, max_size=4)


@pytest.mark.parametrize("fold", ["\r\n ", "\r\n\t", "\n  ", "\n\t"], ids=repr)
@given(st.lists(st.tuples(words, st.lists(st.booleans())), min_size=1, max_size=8), st.booleans())
def test_a_fold_anywhere_is_unfolded_and_a_head_without_one_reads_the_same(
    fold: str, headers: list[tuple[list[str], list[bool]]], bare_lf: bool
) -> None:
    plain, folded = [], []
    for n, (value_words, folds) in enumerate(headers):
        plain.append(f"X-H{n}: " + " ".join(value_words))
        value = value_words[0]
        for index, word in enumerate(value_words[1:]):
            value += (fold if index < len(folds) and folds[index] else " ") + word
        folded.append(f"X-H{n}: " + value)

    def parsed(lines: list[str]) -> list[str | None]:
        line_end = "\n" if bare_lf else "\r\n"
        head = line_end.join(["OPTIONS sip:a@b SIP/2.0", *lines, "Content-Length: 0"])
        message = parse_message((head + line_end + line_end).encode())
        return [message.headers.get(f"X-H{n}") for n in range(len(lines))]

    assert parsed(folded) == parsed(plain) == [" ".join(w) for w, _ in headers]


@pytest.mark.parametrize("every", [1, 2, 3], ids=["all LF", "every 2nd LF", "every 3rd LF"])
def test_bare_lf_line_ends_are_tolerated_as_crlf(every: int) -> None:
    """Line ends that are a bare LF, alone or mixed with CRLFs, give the same headers."""
    head, _, body = INVITE.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    mixed = lines[0] + b"".join(
        (b"\n" if n % every == 0 else b"\r\n") + line for n, line in enumerate(lines[1:])
    )
    crlf, lf = parse_message(INVITE), parse_message(mixed + b"\n\n" + body)
    assert [(h.name, h.value) for h in lf.headers] == [(h.name, h.value) for h in crlf.headers]
    assert lf.body == crlf.body == SDP


def test_round_trip_keeps_every_header_byte_for_byte() -> None:
    message = parse_message(INVITE, stream=True)
    assert message.to_bytes() == INVITE


def test_edit_regenerates_only_the_edited_header() -> None:
    message = parse_message(INVITE, stream=True)
    message.headers.replace_first_value("Via", "SIP/2.0/TLS proxy.example.test;branch=z9hG4bKnew")
    out = message.to_bytes()
    assert b"X-Vendor-Thing:   keep   this   exactly  \r\n" in out
    assert b"f: Alice <sip:alice@gw1.example.test>\r\n ;tag=1928301774\r\n" in out
    assert parse_message(out, stream=True).vias[1].host == "gw1.example.test"


def test_serialiser_fixes_a_stale_content_length() -> None:
    message = parse_message(INVITE, stream=True)
    message.body = b"v=0\r\n"
    reparsed = parse_message(message.to_bytes(), stream=True)
    assert reparsed.body == b"v=0\r\n"


def test_sdp_security_inspection() -> None:
    sdp = parse_sdp(SDP)
    assert [m.proto for m in sdp.media] == ["RTP/SAVP", "RTP/AVP"]
    assert srtp_violations(sdp) == []  # the RTP/AVP stream is disabled (port 0)
    clear = parse_sdp(SDP.replace(b"m=video 0", b"m=video 5004"))
    assert srtp_violations(clear) == ["m=video 5004 RTP/AVP (line 8) is not SRTP"]


def test_name_addr_forms() -> None:
    plain = parse_name_addr("sip:alice@example.test;tag=abc")
    assert plain.tag == "abc" and plain.uri.user == "alice"
    quoted = parse_name_addr('"A \\"quoted\\" <name>" <sip:a@b.test;lr>;tag=x')
    assert quoted.uri.params == {"lr": None} and quoted.tag == "x"


def test_response_parses() -> None:
    raw = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@b>;tag=2\r\n"
        b"From: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    response = parse_message(raw)
    assert (
        isinstance(response, Response) and response.status == 180 and response.reason == "Ringing"
    )


def test_datagram_without_content_length_takes_the_rest_but_stream_needs_it() -> None:
    raw = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\nbody"
    assert parse_message(raw).body == b"body"
    with pytest.raises(ParseError, match="Missing Content-Length"):
        parse_message(raw, stream=True)


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"OPTIONS sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", 505, "Version Not Supported"),
        (b"OPTIONS  sip:a@b SIP/2.0\r\n\r\n", 400, "Malformed Request-Line"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nBad Header Line\r\n\r\n", 400, "Malformed header line"),
        (b"OPTIONS sip:a@b SIP/2.0\r\n folded-first: x\r\n\r\n", 400, "continuation"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99\r\n\r\nshort", 400, "larger than"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nxx", 400, "Conflicting"),
        (b"SIP/2.0 099 Odd\r\n\r\n", 400, "out of range"),
    ],
)
def test_malformed_messages_name_the_problem(raw: bytes, status: int, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(raw)
    assert info.value.status == status
    assert reason in info.value.reason


def test_limits_are_enforced() -> None:
    limits = ParseLimits(max_message_bytes=2048, max_header_count=10, max_line_bytes=300)
    many = b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X-A: 1\r\n" * 11 + b"\r\n"
    with pytest.raises(ParseError, match="Too many headers"):
        parse_message(many, limits)
    long_line = b"OPTIONS sip:a@b SIP/2.0\r\nX-A: " + b"a" * 400 + b"\r\n\r\n"
    with pytest.raises(ParseError, match="too long"):
        parse_message(long_line, limits)
    with pytest.raises(ParseError) as info:
        parse_message(b"x" * 3000, limits)
    assert info.value.status == 513


token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=2,
    max_size=20,
)
value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)


@given(
    st.lists(st.tuples(token, value, st.sampled_from([": ", ":", " : ", ":\t"])), max_size=15),
    st.binary(max_size=200),
)
@settings(max_examples=300)
def test_any_well_formed_message_round_trips_byte_for_byte(
    headers: list[tuple[str, str, str]], body: bytes
) -> None:
    headers = [(n, v, s) for n, v, s in headers if n.lower() not in ("content-length", "l")]
    lines = [b"MESSAGE sip:bob@example.test SIP/2.0"]
    lines += [f"{n}{sep}{v}".encode() for n, v, sep in headers]
    lines.append(f"Content-Length: {len(body)}".encode())
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    message = parse_message(raw, ParseLimits(max_message_bytes=100_000), stream=True)
    assert message.to_bytes() == raw
    assert message.body == body
    lines_read = [(h.key, h.value) for h in message.headers]
    expected = [(header_key(n), v.strip()) for n, v, _ in headers]
    assert lines_read == [*expected, ("content-length", str(len(body)))]


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_random_bytes_never_escape_as_anything_but_a_protocol_error(data: bytes) -> None:
    try:
        message = parse_message(data)
    except RemoteProtocolError:
        return
    for accessor in ("vias", "from_", "to", "cseq", "call_id", "top_via"):
        # Reading any header of a message that parsed may refuse it, but only as a
        # protocol error (a 400 for the peer), never as a crash.
        with contextlib.suppress(RemoteProtocolError):
            getattr(message, accessor)


hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True).filter(
        lambda h: not h.endswith("-")
    ),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
users = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789+-_.!~*'()&=$,;?/%", min_size=1, max_size=15
).filter(lambda u: "%" not in u or bool(__import__("re").fullmatch(r"([^%]|%[0-9A-F]{2})*", u)))


@given(
    st.sampled_from(["sip", "sips"]),
    st.one_of(st.none(), users),
    hosts,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.one_of(st.none(), st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)),
        max_size=3,
    ),
)
def test_uris_round_trip_including_ipv6_and_escapes(
    scheme: str, user: str | None, host: str, port: int | None, params: dict[str, str | None]
) -> None:
    from sipserver.sip.uri import SipUri

    uri = SipUri(scheme, host.lower(), user, None, port, params)
    parsed = parse_uri(str(uri))
    assert parsed == uri
    assert str(parsed) == str(uri)


def test_escaped_user_is_decoded_for_comparison_only() -> None:
    uri = parse_uri("sip:%2B1%20425@example.test;user=phone")
    assert uri.user == "%2B1%20425" and uri.user_unescaped == "+1 425"
    assert str(uri) == "sip:%2B1%20425@example.test;user=phone"
