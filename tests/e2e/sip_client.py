"""A minimal raw-socket SIP sender for malformed-input tests (real sockets, no mocks)."""

from __future__ import annotations

import socket
import uuid


def options(
    host: str,
    port: int,
    transport: str = "UDP",
    *,
    local_port: int = 5099,
    drop: str = "",
    extra: str = "",
    uri: str | None = None,
    method: str = "OPTIONS",
) -> bytes:
    target = f"[{host}]" if ":" in host else host
    via_host = target
    lines = [
        f"{method} {uri or f'sip:{target}:{port}'} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host}:{local_port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@{target}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:{target}>",
        f"Call-ID: {uuid.uuid4().hex}@test",
        f"CSeq: 1 {method}",
    ]
    lines = [line for line in lines if not (drop and line.startswith(drop + ":"))]
    return ("\r\n".join(lines) + "\r\n" + extra + "Content-Length: 0\r\n\r\n").encode()


def udp_exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, (host, port))
        reply, _ = sock.recvfrom(65535)
        return reply


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read one response (head + Content-Length body) from a stream socket."""
    sock.settimeout(timeout)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return buffer
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value.strip())
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


def header(response: bytes, name: str) -> str | None:
    for line in response.split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
