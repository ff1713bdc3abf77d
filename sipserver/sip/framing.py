"""Stream framing (RFC 3261 §18.3): messages on TCP/TLS are delimited by Content-Length.

Also recognises the RFC 5626 §3.5.1 keep-alive: a CRLFCRLF "ping" between messages,
which the transport answers with a CRLF "pong".
"""

from __future__ import annotations

from typing import Final

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.message import ParseLimits, find_head_end
from sipserver.sip.numbers import ascii_int

_CR_LF: Final = (13, 10)


def content_lengths(head: bytes) -> set[bytes]:
    """The values of every Content-Length (or compact `l`) header line in a message head.
    One pass of C-level searches over the lowered head, not a regex per line."""
    lowered = head.lower()
    found: set[bytes] = set()
    for marker in (b"\ncontent-length", b"\nl"):
        start = lowered.find(marker)
        while start != -1:
            rest = start + len(marker)
            end = lowered.find(b"\n", rest)
            line = head[rest : len(head) if end == -1 else end].rstrip(b"\r")
            name_rest = line.lstrip(b" \t")
            if name_rest.startswith(b":"):
                found.add(name_rest[1:].strip(b" \t"))
            start = lowered.find(marker, rest)
    return found


class KeepAlivePing:
    """A CRLFCRLF seen between messages."""

    def __repr__(self) -> str:
        return "KeepAlivePing"


PING: Final = KeepAlivePing()


class FramingError(RemoteProtocolError):
    """The stream can no longer be framed; the connection must close. `head` holds the
    headers of the offending message when they were read, for a last error response."""

    def __init__(self, reason: str, status: int = 400, head: bytes | None = None) -> None:
        super().__init__(reason, status)
        self.head = head


class StreamFramer:
    """Feed bytes, get whole messages (bytes) and keep-alive pings back."""

    def __init__(self, limits: ParseLimits = ParseLimits()) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._searched = 0  # how much of the buffer is known to hold no end of headers
        self._lines = 0  # line ends in the searched part of a head still arriving

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytes | KeepAlivePing]:
        self._buffer += data
        out: list[bytes | KeepAlivePing] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    def _next(self) -> bytes | KeepAlivePing | None:
        buffer = self._buffer
        while buffer and buffer[0] in _CR_LF:
            if buffer.startswith(b"\r\n\r\n"):
                del buffer[:4]
                return PING
            if len(buffer) < 4 and b"\r\n\r\n".startswith(buffer):
                return None  # may still become a ping
            # A lone CRLF before a message is ignored (§7.5).
            del buffer[: 2 if buffer.startswith(b"\r\n") else 1]
            self._searched = self._lines = 0
        if not buffer:
            return None
        # Resume where the last search stopped (less the 3 bytes an end could straddle), so a
        # header that arrives a byte at a time costs linear, not quadratic, time.
        start = max(0, self._searched - 3)
        head_end = find_head_end(buffer, start)
        if head_end is None:
            self._check_partial_head(buffer)
            self._searched = len(buffer)
            if len(buffer) > self._limits.max_message_bytes:
                raise FramingError("Message Too Large", 513)
            return None
        head_start, body_start = head_end
        head = bytes(buffer[:head_start])
        lengths = content_lengths(head)
        if not lengths:
            raise FramingError("Missing Content-Length", 400, head)
        if len(lengths) > 1:
            raise FramingError("Conflicting Content-Length headers", 400, head)
        length = ascii_int(lengths.pop(), 9)
        if length is None:
            raise FramingError("Malformed Content-Length", 400, head)
        total = body_start + length
        if total > self._limits.max_message_bytes:
            raise FramingError("Message Too Large", 513, head)
        self._searched = head_start  # the end of the headers is known: keep it
        if len(buffer) < total:
            return None
        message = bytes(buffer[:total])
        del buffer[:total]
        self._searched = self._lines = 0
        return message

    def _check_partial_head(self, buffer: bytearray) -> None:
        """Limits enforced while a head is still arriving: a line longer than
        max_line_bytes, or more lines than max_header_count, fail at once instead of being
        held until the message size limit. The complete lines go with the error so that a
        400 can still be routed back."""
        self._lines += buffer.count(b"\n", self._searched)
        line_start = buffer.rfind(b"\n") + 1
        if len(buffer) - line_start > self._limits.max_line_bytes:
            raise FramingError("Header line too long", 400, bytes(buffer[:line_start]).rstrip())
        if self._lines > self._limits.max_header_count + 1:
            raise FramingError("Too many headers", 400, bytes(buffer[:line_start]).rstrip())
