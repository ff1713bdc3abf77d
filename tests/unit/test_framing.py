from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sipserver.sip.framing import PING, FramingError, StreamFramer, content_lengths
from sipserver.sip.message import ParseLimits, _head_bounds, find_head_end, parse_message


def _msg(n: int, body: bytes = b"") -> bytes:
    return (
        f"OPTIONS sip:h SIP/2.0\r\nCall-ID: {n}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


STREAM = _msg(1) + b"\r\n\r\n" + _msg(2, b"abc\r\n\r\nxyz") + b"\r\n" + _msg(3, b"x")


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=30))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    framer = StreamFramer()
    out: list[object] = []
    points = [*sorted(set(cuts)), len(STREAM)]
    start = 0
    for point in points:
        out += framer.feed(STREAM[start:point])
        start = point
    assert out == [_msg(1), PING, _msg(2, b"abc\r\n\r\nxyz"), _msg(3, b"x")]
    assert framer.buffered == 0


# What find_head_end replaced: the leftmost CRLF CRLF or bare LF LF.
HEAD_END_REGEX = re.compile(rb"\r\n\r\n|\n\n")


LINE_BITS = st.sampled_from([b"\r\n", b"\n", b"\r", b"a", b"\r\n\r\n", b"\n\n"])


@given(st.lists(LINE_BITS, max_size=12).map(b"".join), st.integers(0, 30))
@example(b"a\r\n\r\nb\n\n", 0)  # LF LF after the CRLF CRLF does not count
@example(b"a\n\nb\r\n\r\n", 0)
def test_the_head_ends_where_the_regex_said(data: bytes, start: int) -> None:
    match = HEAD_END_REGEX.search(data, start)
    expected = None if match is None else (match.start(), match.end())
    assert find_head_end(data, start) == expected
    assert find_head_end(bytearray(data), start) == expected


@given(st.lists(LINE_BITS, max_size=12).map(b"".join))
@example(b"a\r\n\r\nb\n\n")
@example(b"a\n\nb\r\n\r\n")
def test_the_parser_ends_the_head_where_the_framer_does(data: bytes) -> None:
    """parse_message finds the end in text, the framer in bytes: one rule, both places."""
    found = find_head_end(data)
    if found is not None:
        assert _head_bounds(data.decode("latin-1")) == found


NAME_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\'), max_size=8
)


@given(NAME_TEXT, st.binary(max_size=40), st.booleans())
@example("Jörg", b"\xff\xfe v=0\r\n\r\n", True)
def test_the_body_is_the_bytes_after_the_head_whatever_they_are(
    name: str, body: bytes, bare_lf: bool
) -> None:
    """The body is cut from the bytes, the head read as text: a multibyte name in the head
    or bytes that are not UTF-8 in the body must not shift where the body starts."""
    end = "\n" if bare_lf else "\r\n"
    head = end.join(
        [
            "MESSAGE sip:a@example.test SIP/2.0",
            "Via: SIP/2.0/UDP h.example.test;branch=z9hG4bK-1",
            f'From: "{name}" <sip:x@example.test>;tag=1',
            "To: <sip:a@example.test>",
            "Call-ID: 1",
            "CSeq: 1 MESSAGE",
            f"Content-Length: {len(body)}",
        ]
    )
    message = parse_message(f"{head}{end}{end}".encode() + body + b"extra", stream=False)
    assert message.body == body
    assert message.headers.get("From") == f'"{name}" <sip:x@example.test>;tag=1'


def test_missing_content_length_loses_framing_and_keeps_the_head() -> None:
    with pytest.raises(FramingError) as info:
        StreamFramer().feed(b"OPTIONS sip:h SIP/2.0\r\nCall-ID: 1\r\n\r\n")
    assert info.value.reason == "Missing Content-Length"
    assert info.value.head is not None and info.value.head.startswith(b"OPTIONS")


def test_oversized_message_and_endless_headers_are_refused() -> None:
    limits = ParseLimits(max_message_bytes=1024)
    with pytest.raises(FramingError) as info:
        StreamFramer(limits).feed(b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 5000\r\n\r\n")
    assert info.value.status == 513
    with pytest.raises(FramingError):
        StreamFramer(limits).feed(b"OPTIONS sip:h SIP/2.0\r\n" + b"X: y\r\n" * 300)


def test_content_length_is_found_in_any_header_position() -> None:
    message = b"OPTIONS sip:h SIP/2.0\r\nl: 3\r\nCall-ID: 1\r\n\r\nabc"
    assert StreamFramer().feed(message + _msg(2)) == [message, _msg(2)]


def test_a_lone_crlf_waits_for_more() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [PING]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 12\r\nVia: x", {b"12"}),
        (b"X\r\nl:5\r\nlx: 3\r\nContent-Length : 7 \r\ncontent-length:\t9", {b"5", b"7", b"9"}),
        (b"X\r\nL: 1", {b"1"}),
        (b"X\r\nContent-Lengthy: 4\r\nX-Content-Length: 5", set()),
        (b"X\r\nContent-Length: 12 34", {b"12 34"}),  # then refused as malformed
        (b"Content-Length: 3\r\nVia: x", set()),  # the start line is no header
    ],
)
def test_content_length_values_are_found_in_any_spelling(head: bytes, expected: set[bytes]) -> None:
    assert content_lengths(head) == expected


def test_a_long_line_trickled_byte_by_byte_fails_at_the_line_limit_not_the_size_limit() -> None:
    framer = StreamFramer(ParseLimits(max_message_bytes=65535, max_line_bytes=8192))
    head = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK1\r\nX-Long: "
    fed = 0
    with pytest.raises(FramingError) as caught:
        for byte in head + b"a" * 70000:
            framer.feed(bytes([byte]))
            fed += 1
    assert caught.value.reason == "Header line too long" and caught.value.status == 400
    assert fed < len(head) + 8192 + 16  # failed as the line passed the limit
    assert caught.value.head is not None and b"Via: SIP/2.0/TCP" in caught.value.head


def test_too_many_header_lines_fail_while_the_head_is_still_arriving() -> None:
    framer = StreamFramer(ParseLimits(max_header_count=8))
    with pytest.raises(FramingError) as caught:
        framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-A: 1\r\n" * 20)
    assert caught.value.reason == "Too many headers"
