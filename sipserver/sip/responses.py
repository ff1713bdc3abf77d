"""Building responses to requests (RFC 3261 §8.2.6) and Warning values (§20.43)."""

from __future__ import annotations

import hashlib
from typing import Final

from sipserver.sip.header_fields import KEY, NAME, VALUE, make_header
from sipserver.sip.header_line import Header
from sipserver.sip.headers import quote
from sipserver.sip.message import Headers, Request, Response

REASON_PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    302: "Moved Temporarily",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}

_COPIED: Final = ("via", "from", "call-id", "cseq")


def local_tag(request: Request) -> str:
    """A To-tag that is the same for every retransmission of one request, so that
    stateless answers to retransmissions agree."""
    via = request.headers.get_all("Via")
    seed = "|".join(
        [request.call_id or "", request.headers.get("From") or "", via[0] if via else ""]
    )
    return stable_tag(seed.encode("utf-8", "surrogateescape"))


def stable_tag(seed: bytes) -> str:
    """local_tag's hash of Call-ID|From|top Via, for callers that hold the raw bytes."""
    return hashlib.sha1(seed).hexdigest()[:12]


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
) -> Response:
    """A response that copies Via, From, To, Call-ID and CSeq from the request. Works on a
    partially parsed request too: it copies whatever of those headers is there."""
    items: list[Header] = []
    for header in request.headers:
        if header[KEY] in _COPIED:
            items.append(header)
        elif header[KEY] == "to":
            value = header[VALUE]
            if status > 100 and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag or local_tag(request)}"
            items.append(make_header(header[NAME], value))
        elif header[KEY] == "timestamp" and status == 100:
            items.append(header)
    response = Response(
        Headers(items), body, status=status, reason=reason or REASON_PHRASES.get(status, "")
    )
    for name, value in headers:
        response.headers.add(name, value)
    return response


def warning_value(agent: str, text: str, code: int = 399) -> str:
    return f"{code} {agent} {quote(text)}"
