"""HEP v3 (the Homer Encapsulation Protocol): one SIP message with where it came from and
went to, when, and its Call-ID, as the packet a capture server (Homer, sngrep) reads.
A packet is `HEP3`, its total length, then chunks of (vendor 0, type, length, value)."""

from __future__ import annotations

import functools
import ipaddress
import re
import struct

PROTOCOL_SIP = 1
IPPROTO = {"udp": 17, "tcp": 6, "tls": 6}  # TLS is carried in TCP; the payload is decrypted
_CHUNK = struct.Struct("!HHH")
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_CSEQ_METHOD = re.compile(rb"\r\n(?:cseq)[ \t]*:[ \t]*\d+[ \t]+([A-Za-z]+)", re.IGNORECASE)


def _chunk(kind: int, value: bytes) -> bytes:
    return _CHUNK.pack(0, kind, _CHUNK.size + len(value)) + value


def encode(
    transport: str,
    source: tuple[str, int],
    destination: tuple[str, int],
    seconds: int,
    microseconds: int,
    agent_id: int,
    message: bytes,
) -> bytes:
    """The HEP v3 packet for one SIP message (`transport`: udp, tcp or tls)."""
    head = _addressing(transport, source, destination)
    call_id = call_id_of(message)
    tail = _chunk(0x0011, call_id) if call_id else b""
    length = 6 + len(head) + _MIDDLE.size + len(message) + len(tail)
    middle = _MIDDLE.pack(
        0, 0x0009, 10, seconds,
        0, 0x000A, 10, microseconds,
        0, 0x000B, 7, PROTOCOL_SIP,
        0, 0x000C, 10, agent_id,
        0, 0x000F, 6 + len(message),
    )  # fmt: skip
    return b"".join((b"HEP3", struct.pack("!H", length), head, middle, message, tail))


# Timestamp (seconds, microseconds), protocol type, agent ID, and the payload chunk's header.
_MIDDLE = struct.Struct("!HHHI HHHI HHHB HHHI HHH")


@functools.lru_cache(maxsize=4096)
def _addressing(transport: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The chunks that depend only on the flow (family, protocol, addresses, ports): a
    flow carries many messages, so they are built once."""
    src, dst = _address(source[0]), _address(destination[0])
    if src.version != dst.version:  # e.g. a v4-mapped peer on a v6 socket
        src, dst = _same_family(src, dst)
    v6 = src.version == 6
    return b"".join(
        (
            _chunk(0x0001, bytes([10 if v6 else 2])),
            _chunk(0x0002, bytes([IPPROTO[transport]])),
            _chunk(0x0005 if v6 else 0x0003, src.packed),
            _chunk(0x0006 if v6 else 0x0004, dst.packed),
            _chunk(0x0007, struct.pack("!H", source[1])),
            _chunk(0x0008, struct.pack("!H", destination[1])),
        )
    )


def call_id_of(message: bytes) -> bytes | None:
    found = _CALL_ID.search(message, 0, message.find(b"\r\n\r\n") + 2 or len(message))
    return found.group(1).strip() if found else None


def method_of(message: bytes) -> str | None:
    """A request's method, or the method a response answers (from its CSeq)."""
    if message.startswith(b"SIP/2.0 "):
        found = _CSEQ_METHOD.search(message)
        return found.group(1).decode("ascii").upper() if found else None
    space = message.find(b" ", 0, 32)
    return message[:space].decode("ascii", "replace") if space > 0 else None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An unknown local address (a connection still being opened) is the wildcard."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ipaddress.IPv4Address(0)


def _same_family(
    a: ipaddress.IPv4Address | ipaddress.IPv6Address,
    b: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
    def v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
        if isinstance(address, ipaddress.IPv6Address):
            return address
        return ipaddress.IPv6Address(f"::ffff:{address}")

    return v6(a), v6(b)
