"""A scripted gateway for the cross-process tests: each call on a new mutual-TLS connection
with gw1's certificate (the kernel hands each to any worker), INVITE, ACK and BYE along
the Record-Route set, through a real socket. Its peer, `AnsweringPhone`, answers every call
on a registered softphone's connection from a thread."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import SERVER_FQDN, Pki
from tests.e2e.sip_client import header, status_line
from tests.e2e.softphone import TlsPhone


@dataclass
class CallResult:
    final: str  # the INVITE's final status line
    bye: str | None  # the BYE's status line, when the call was answered
    local_port: int


class SipReader:
    """Whole messages from a stream socket, however the bytes were split or joined."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        while True:
            self.buffer = self.buffer.lstrip(b"\r\n")  # keep-alives
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if found:
                length = int(header(head + b"\r\n", "Content-Length") or 0)
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return head + b"\r\n\r\n" + rest[:length]
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.buffer += chunk


def _headers(response: bytes, name: str) -> list[str]:
    found = []
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == name.lower():
            found += [part.strip() for part in value.split(",")]
    return found


def gateway_call(
    pki: Pki, port: int, number: str, timeout: float = 10.0, cafile: Path | None = None
) -> CallResult:
    context = ssl.create_default_context(cafile=str(cafile or pki.ca_file))
    cert, key = pki.client_files("gw1", pki.gw1)
    context.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with context.wrap_socket(raw, server_hostname=SERVER_FQDN) as sock:
        reader = SipReader(sock)
        local = int(sock.getsockname()[1])
        call_id, tag = f"gw-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex[:8]
        common = (
            f"From: <sip:gw@gw1.example.test>;tag={tag}\r\nCall-ID: {call_id}\r\n"
            f"Max-Forwards: 70\r\n"
        )

        def send(head: str) -> None:
            sock.sendall((head + "Content-Length: 0\r\n\r\n").encode())

        def via() -> str:
            return f"Via: SIP/2.0/TLS 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"

        send(
            f"INVITE sip:{number}@{SERVER_FQDN} SIP/2.0\r\n{via()}{common}"
            f"To: <sip:{number}@{SERVER_FQDN}>\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:gw@127.0.0.1:{local};transport=tls>\r\n"
        )
        while True:
            response = reader.next(timeout)
            if not response.startswith(b"SIP/2.0 1"):
                break
        final = status_line(response)
        if not final.startswith("SIP/2.0 2"):
            return CallResult(final, None, local)
        to = header(response, "To") or ""
        target = (header(response, "Contact") or "").strip("<>").split(">")[0]
        routes = "".join(f"Route: {r}\r\n" for r in reversed(_headers(response, "Record-Route")))
        send(f"ACK {target} SIP/2.0\r\n{via()}{common}To: {to}\r\n{routes}CSeq: 1 ACK\r\n")
        send(f"BYE {target} SIP/2.0\r\n{via()}{common}To: {to}\r\n{routes}CSeq: 2 BYE\r\n")
        bye = status_line(reader.next(timeout))
        return CallResult(final, bye, local)


class AnsweringPhone:
    """Answers every INVITE on the phone's connection (180, 200), takes the ACK, and
    answers the BYE, until closed. What it saw is kept, in order."""

    def __init__(self, phone: TlsPhone) -> None:
        self.phone = phone
        self.seen: list[bytes] = []
        self.error: BaseException | None = None
        self._reader = SipReader(phone.sock)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    message = self._reader.next(timeout=60)
                except (OSError, ValueError):
                    return
                if not message:
                    return
                self.seen.append(message)
                if message.startswith(b"INVITE "):
                    self.phone.reply(message, 180, "Ringing")
                    self.phone.reply(message, 200, "OK")
                elif message.startswith(b"BYE "):
                    self.phone.reply(message, 200, "OK")
        except BaseException as exc:  # reported by the test
            self.error = exc

    def count(self, method: str) -> int:
        return sum(m.startswith(method.encode() + b" ") for m in self.seen)

    def close(self) -> None:
        self.phone.close()
        self._thread.join(5)
