"""Request checks, in the order a response can be built (RFC 3261 §8.2, §16.3)."""

from __future__ import annotations

import re
from typing import Final

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.header_fields import KEY, VALUE
from sipserver.sip.message import Message, Request
from sipserver.sip.numbers import ascii_int
from sipserver.sip.uri import SIP_SCHEMES, UriError, parse_name_addr, parse_uri

KNOWN_METHODS: Final = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    }
)
_REQUIRED: Final = (
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
)
_ONCE: Final = (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_ENVELOPE: Final = frozenset(key for key, _ in _REQUIRED)
# A parameter or list element with nothing in it (`;;`, `;,`, `,,`, a trailing `;`): the
# grammar has no empty ones (RFC 3261 §7.3.1 redefines #rule without null elements).
_SEPARATORS: Final = (";", ",")
_EMPTY_PAIRS: Final = (";;", ";,", ",;", ",,")
_LISTS_CHECKED: Final = {"via": "Via", "contact": "Contact"}
_QUOTED: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


def check_envelope(message: Message) -> None:
    """The headers every message needs before any answer can be built or matched.
    Raises RemoteProtocolError whose reason names the problem (e.g. `Missing Call-ID`)."""
    counts: dict[str, int] = {}
    for header in message.headers:
        if header[KEY] in _ENVELOPE:
            counts[header[KEY]] = counts.get(header[KEY], 0) + 1
    for key, name in _REQUIRED:
        if key not in counts:
            raise RemoteProtocolError(f"Missing {name}")
    for key, name in _ONCE:
        if counts[key] > 1:
            raise RemoteProtocolError(f"Duplicate {name}")
    # The top Via is what responses are routed and transactions matched by; the others are
    # copied as they are (a response's are the next hops' business).
    try:
        message.top_via  # noqa: B018 -- parses it
    except UriError as exc:
        raise RemoteProtocolError("Malformed Via") from exc
    for name in ("From", "To"):
        try:
            parse_name_addr(message.headers.get(name) or "")
        except UriError as exc:
            raise RemoteProtocolError(f"Malformed {name}") from exc
    if not (message.call_id or "").strip():
        raise RemoteProtocolError("Empty Call-ID")
    message.cseq  # noqa: B018 -- raises "Malformed CSeq"


def check_request_line(request: Request) -> None:
    """Request-line and header checks that come after the envelope."""
    _, method = request.cseq
    if method != request.method:
        raise RemoteProtocolError("CSeq method does not match the Request-Line")
    scheme = request.uri.partition(":")[0].lower()
    if scheme not in SIP_SCHEMES:
        raise RemoteProtocolError(f"Unsupported URI Scheme {scheme!r}", 416)
    try:
        parse_uri(request.uri)
    except UriError as exc:
        raise RemoteProtocolError("Malformed Request-URI") from exc
    max_forwards = request.headers.get("Max-Forwards")
    if max_forwards is not None:
        hops = ascii_int(max_forwards.strip(), 3)
        if hops is None or hops > 255:
            raise RemoteProtocolError("Malformed Max-Forwards")
    for header in request.headers:  # whole lines: get_all() would drop empty elements
        if header[KEY] in _LISTS_CHECKED and _has_empty_element(header[VALUE]):
            name = _LISTS_CHECKED[header[KEY]]
            raise RemoteProtocolError(f"Malformed {name}: an empty parameter or list element")


def _has_empty_element(value: str) -> bool:
    """Without whitespace, an empty element is a separator first, last or next to another
    (substring tests: a regex search cost ten times as much on every request's Via and
    Contact)."""
    if '"' in value:  # a display name may hold anything
        value = _QUOTED.sub('""', value)
    compact = "".join(value.split())
    return (
        compact[:1] in _SEPARATORS
        or compact[-1:] in _SEPARATORS
        or any(pair in compact for pair in _EMPTY_PAIRS)
    )


def check_method(request: Request) -> None:
    if request.method not in KNOWN_METHODS:
        raise RemoteProtocolError("Not Implemented", 501)


def check_required_options(request: Request, header: str, supported: frozenset[str]) -> None:
    """420 Bad Extension for option tags in Require (UAS) or Proxy-Require (proxy) that we
    do not support. ACK and CANCEL are exempt (§8.2.2.3)."""
    if request.method in ("ACK", "CANCEL"):
        return
    wanted = [tag.strip() for tag in request.headers.get_all(header)]
    unsupported = [tag for tag in wanted if tag.lower() not in supported]
    if unsupported:
        raise RemoteProtocolError(
            "Bad Extension", 420, headers=(("Unsupported", ", ".join(unsupported)),)
        )


def max_forwards(request: Request) -> int:
    value = request.headers.get("Max-Forwards")
    hops = ascii_int(value.strip(), 3) if value is not None else None
    return 70 if hops is None else hops
