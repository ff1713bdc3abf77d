"""SIP messages: parse and serialise (RFC 3261 §7, §25).

Every header keeps the exact bytes it arrived with until someone edits it, so a proxy
forwards headers it does not understand byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.header_fields import KEY, NAME, RAW, VALUE, header_text, make_header
from sipserver.sip.header_line import Header
from sipserver.sip.headers import (
    LIST_HEADERS,
    canonical_name,
    header_key,
    is_token,
    split_list,
    split_list_cached,
)
from sipserver.sip.memo import Memo
from sipserver.sip.numbers import ascii_int
from sipserver.sip.uri import NameAddr, parse_name_addr
from sipserver.sip.via import Via, parse_via

SIP_VERSION: Final = "SIP/2.0"
_LINE_SPLIT_TEXT: Final = re.compile(r"\r\n|\n")
_VERSION: Final = re.compile(r"^\d+\.\d+$")
_FOLD: Final = re.compile(r"\r?\n[ \t]+")


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_message_bytes: int = 65535
    max_header_count: int = 256
    max_line_bytes: int = 8192


class Headers:
    """An ordered, case-insensitive, compact-form-aware list of headers."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Header] | None = None) -> None:
        self._items: list[Header] = items or []

    def __iter__(self) -> Iterator[Header]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(h[KEY] == header_key(name) for h in self._items)

    def copy(self) -> Headers:
        return Headers(list(self._items))

    def get(self, name: str) -> str | None:
        """The first header line's value (whole line, not split at commas)."""
        key = header_key(name)
        for header in self._items:
            if header[KEY] == key:
                return header[VALUE]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value, with comma-separated list headers split into elements."""
        key = header_key(name)
        values: list[str] = []
        for header in self._items:
            if header[KEY] == key:
                if key in LIST_HEADERS and not (key == "contact" and header[VALUE].strip() == "*"):
                    values.extend(split_list_cached(header[VALUE]))
                else:
                    values.append(header[VALUE])
        return values

    def add(self, name: str, value: str) -> None:
        self._items.append(make_header(name, value))

    def add_first(self, name: str, value: str) -> None:
        self._items.insert(0, make_header(name, value))

    def remove(self, name: str) -> int:
        key = header_key(name)
        before = len(self._items)
        self._items = [h for h in self._items if h[KEY] != key]
        return before - len(self._items)

    def set(self, name: str, value: str) -> None:
        """Replace every line of `name` with one line, in the place of the first."""
        key = header_key(name)
        for index, header in enumerate(self._items):
            if header[KEY] == key:
                self._items[index] = make_header(canonical_name(name), value)
                self._items = [h for i, h in enumerate(self._items) if i <= index or h[KEY] != key]
                return
        self.add(canonical_name(name), value)

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first element of a list header (e.g. the top Via), keeping the rest."""
        key = header_key(name)
        for index, header in enumerate(self._items):
            if header[KEY] == key:
                rest = split_list(header[VALUE])[1:]
                self._items[index] = make_header(header[NAME], ", ".join([value, *rest]))
                return
        raise KeyError(name)


@dataclass(slots=True)
class Message:
    headers: Headers
    body: bytes = b""
    version: str = SIP_VERSION

    # --- typed accessors for the headers every message has -------------------------
    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    # Parsed values are shared between messages with the same header text (a message and its
    # retransmissions, a request and its responses): they are immutable, so parsing each
    # distinct text once is enough.
    @property
    def vias(self) -> list[Via]:
        """Every Via, parsed (raises UriError if one cannot be; only the top one is checked
        when a message arrives)."""
        return [parse_via(value) for value in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via | None:
        value = self.headers.get("Via")
        if value is None:
            return None
        return parse_via(split_list_cached(value)[0] if "," in value else value)

    @property
    def from_(self) -> NameAddr | None:
        value = self.headers.get("From")
        return parse_name_addr(value) if value is not None else None

    @property
    def to(self) -> NameAddr | None:
        value = self.headers.get("To")
        return parse_name_addr(value) if value is not None else None

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.headers.get("CSeq")
        if value is None:
            raise RemoteProtocolError("Missing CSeq")
        return _parse_cseq(value)

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        lines = [self.start_line()]
        length_written = False
        for header in self.headers:
            if header[KEY] == "content-length":
                if length_written:
                    continue
                length_written = True
                if header[RAW] is None or _content_length_of(header) != len(self.body):
                    lines.append(f"{header[NAME]}: {len(self.body)}")
                    continue
            lines.append(header_text(header))
        if not length_written:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


def _parse_cseq(value: str) -> tuple[int, str]:
    return _CSEQS.get(value)


def _parse_cseq_text(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    sequence = ascii_int(number, 10)
    if sequence is None or sequence >= 2**31 or not method:
        raise RemoteProtocolError("Malformed CSeq")
    return sequence, method


_CSEQS: Final = Memo(_parse_cseq_text, 1024)


def _content_length_of(header: Header) -> int | None:
    return ascii_int(header[VALUE].strip(), 9)


# Request and Response write their __init__ out for the reason Via gives: the generated
# one stays interpreted in the compiled core, and two messages are made per message
# proxied. (Message itself is never made.)
@dataclass(slots=True, init=False)
class Request(Message):
    method: str = ""
    uri: str = ""

    def __init__(
        self,
        headers: Headers,
        body: bytes = b"",
        version: str = SIP_VERSION,
        method: str = "",
        uri: str = "",
    ) -> None:
        self.headers = headers
        self.body = body
        self.version = version
        self.method = method
        self.uri = uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"


@dataclass(slots=True, init=False)
class Response(Message):
    status: int = 0
    reason: str = ""

    def __init__(
        self,
        headers: Headers,
        body: bytes = b"",
        version: str = SIP_VERSION,
        status: int = 0,
        reason: str = "",
    ) -> None:
        self.headers = headers
        self.body = body
        self.version = version
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"


class ParseError(RemoteProtocolError):
    """A message that cannot be parsed. `partial` holds what could be read, so that a
    stateless error response can still copy Via, From, To, Call-ID and CSeq."""

    def __init__(self, reason: str, status: int = 400, partial: Message | None = None) -> None:
        super().__init__(reason, status)
        self.partial = partial


def find_head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """Where the first empty line (CRLF CRLF, or a bare LF LF) begins and ends, from
    `start`. Two C-level finds, where a regex alternation tested a character class at
    every byte (15 % of the core's instructions, one search per message)."""
    crlf = data.find(b"\r\n\r\n", start)
    # A bare LF LF counts only before the first CRLF CRLF (it cannot straddle it).
    lf = data.find(b"\n\n", start, len(data) if crlf < 0 else crlf)
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return None


def parse_message(
    data: bytes, limits: ParseLimits = ParseLimits(), *, stream: bool = False
) -> Message:
    """Parse one complete message. For streams the caller has already framed it by
    Content-Length, so `data` is exactly one message."""
    if len(data) > limits.max_message_bytes:
        raise ParseError("Message Too Large", 513)
    # The whole message is decoded once and searched as text: str's find and split are
    # direct calls in the compiled core, where bytes' are looked up by name on every
    # message (a cold path of a hundred cache lines). The body is the decoded text's
    # tail only in bytes, so it is sliced from `data`.
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\r") or text.startswith("\n"):
        # Leading CRLFs (RFC 3261 §7.5).
        data = data.lstrip(b"\r\n")
        text = text.lstrip("\r\n")
    head_end, body_start = _head_bounds(text)
    head = text[:head_end]
    if not head:
        raise ParseError("Empty message")
    if len(text) == len(data):
        # One byte a character (ASCII, or bytes that are not UTF-8, each one surrogate).
        body = data[body_start:]
    else:
        body = data[len(text[:body_start].encode("utf-8", "surrogateescape")) :]
    lines = head.split("\r\n")
    # Bare LF line ends too (tolerated on input). Joined, the lines hold an LF only if one
    # was bare: a copy and a memchr, a third of counting the LFs.
    if "\n" in "".join(lines):
        lines = _LINE_SPLIT_TEXT.split(head)
    if len(head) > limits.max_line_bytes:
        for line in lines:
            if len(line.encode("utf-8", "surrogateescape")) > limits.max_line_bytes:
                raise ParseError("Header line too long", partial=_partial(lines, limits))
    headers = _parse_headers(lines, limits)
    message = _parse_start_line(lines[0], headers)
    message.body = _frame_body(headers, body, message, stream)
    return message


def _head_bounds(text: str) -> tuple[int, int]:
    """Where the head ends and the body begins: at the first empty line (CRLF CRLF, or a
    bare LF LF before it), as find_head_end finds it in bytes. A datagram is a whole
    message (§18.3): one without the empty line is all head, less its last line end."""
    crlf = text.find("\r\n\r\n")
    lf = text.find("\n\n", 0, len(text) if crlf < 0 else crlf)
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 4
    return len(text.rstrip("\r\n")), len(text)


def _parse_headers(lines: list[str], limits: ParseLimits) -> Headers:
    items: list[Header] = []
    count = len(lines)
    index = 1  # lines[0] is the start line
    while index < count:
        line = lines[index]
        index += 1
        if line[:1] in (" ", "\t"):
            raise ParseError("Header continuation without a header")
        if index < count and lines[index][:1] in (" ", "\t"):
            folded = [line]
            while index < count and lines[index][:1] in (" ", "\t"):
                folded.append(lines[index])
                index += 1
            items.append(_make_header("\r\n".join(folded)))
        else:
            header = _SEEN_LINES.get(line)
            if header is None:
                header = _make_header(line)
                if len(_SEEN_LINES) >= _SEEN_LINES_MAX:
                    _SEEN_LINES.clear()
                _SEEN_LINES[line] = header
            items.append(header)
        if len(items) > limits.max_header_count:
            raise ParseError("Too many headers", partial=_partial(lines, limits))
    return Headers(items)


def _partial(lines: list[str], limits: ParseLimits) -> Message | None:
    """What a refused message still tells (its Via, From, To, Call-ID and CSeq among the
    lines within the limits), so that its 400 can be routed back. None if even that fails."""
    short = [line for line in lines[1 : limits.max_header_count + 1]]
    kept = [line for line in short if len(line) <= limits.max_line_bytes and line[:1] not in " \t"]
    try:
        headers = Headers([_make_header(line) for line in kept])
        return _parse_start_line(lines[0], headers)
    except ParseError as exc:
        return exc.partial


# Header lines already parsed, by their text: a call's messages repeat most of their lines
# (From, To, Call-ID, Contact, Max-Forwards, Content-Type …), and a Header is immutable.
_SEEN_LINES: Final[dict[str, Header]] = {}
_SEEN_LINES_MAX: Final = 4096


def _make_header(raw: str) -> Header:
    name, colon, value = raw.partition(":")
    name = name.rstrip(" \t")
    if not colon or not is_token(name):
        first = (raw.splitlines() or [""])[0][:40]
        raise ParseError(f"Malformed header line {first!r}")
    if "\n" in value:
        # Unfold: any CRLF followed by whitespace is equivalent to one space (§7.3.1).
        value = _FOLD.sub(" ", value)
    return make_header(name, value.strip(" \t"), raw)


def _parse_start_line(line: str, headers: Headers) -> Message:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not (len(code) == 3 and code.isascii() and code.isdigit()) or (
            version != SIP_VERSION and not _VERSION.match(version[4:])
        ):
            raise ParseError("Malformed Status-Line", partial=Response(headers))
        if version != SIP_VERSION:
            raise ParseError("Version Not Supported", 505, partial=Response(headers))
        status = int(code)
        if not 100 <= status <= 699:
            raise ParseError("Status code out of range", partial=Response(headers))
        return Response(headers, status=status, reason=reason)
    parts = line.split(" ")
    if (
        len(parts) != 3
        or len(line.split()) != 3  # no other whitespace anywhere
        or not parts[2].startswith("SIP/")
        or (parts[2] != SIP_VERSION and not _VERSION.match(parts[2][4:]))
    ):
        method = line.split(" ", 1)[0]
        partial = Request(headers, method=method if is_token(method) else "")
        raise ParseError("Malformed Request-Line", partial=partial)
    method, uri, version = parts
    if not is_token(method):
        raise ParseError("Malformed method", partial=Request(headers))
    request = Request(headers, method=method, uri=uri)
    if version != SIP_VERSION:
        raise ParseError("Version Not Supported", 505, partial=request)
    return request


def _frame_body(headers: Headers, body: bytes, message: Message, stream: bool) -> bytes:
    lengths = {value.strip() for value in headers.get_all("Content-Length")}
    if not lengths:
        if stream:
            raise ParseError("Missing Content-Length", partial=message)
        return body
    if len(lengths) > 1:
        raise ParseError("Conflicting Content-Length headers", partial=message)
    length = ascii_int(lengths.pop(), 9)
    if length is None:
        raise ParseError("Malformed Content-Length", partial=message)
    if length > len(body):
        raise ParseError("Content-Length larger than the message body", partial=message)
    # On datagrams extra bytes after the body are discarded (§18.3).
    return body[:length]


def make_request(
    method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b""
) -> Request:
    return Request(Headers([make_header(n, v) for n, v in headers]), body, method=method, uri=uri)


def make_response_message(
    status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b""
) -> Response:
    return Response(
        Headers([make_header(n, v) for n, v in headers]), body, status=status, reason=reason
    )


__all__ = [
    "SIP_VERSION",
    "Header",
    "Headers",
    "Message",
    "ParseError",
    "ParseLimits",
    "Request",
    "Response",
    "make_request",
    "make_response_message",
    "parse_message",
]
