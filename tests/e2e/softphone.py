"""A scripted softphone for the registrar tests: one mutual-TLS connection to the server
with its own certificate, over which it registers, is called and answers. It speaks just
enough SIP for that, through a real socket."""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path

from tests.certs import Issued
from tests.e2e.conftest import SERVER_FQDN, Pki
from tests.e2e.sip_client import read_response

INSTANCE = "<urn:uuid:00000000-0000-1000-8000-00000000c0de>"


class TlsPhone:
    def __init__(
        self, pki: Pki, cert: Issued, port: int, name: str = "phone1", cafile: Path | None = None
    ) -> None:
        """`cafile`: what the server's certificate must chain to (default: the test CA)."""
        cert_path, key_path = cert.write_pair(pki.root / "phones", f"{name}-{uuid.uuid4().hex[:6]}")
        context = ssl.create_default_context(cafile=str(cafile or pki.ca_file))
        context.load_cert_chain(str(cert_path), str(key_path))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname=SERVER_FQDN)
        self.local_port = int(self.sock.getsockname()[1])
        self.cseq = 0
        self.call_id = f"reg-{uuid.uuid4().hex[:10]}"

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str) -> None:
        self.sock.sendall(text.replace("\n", "\r\n").encode())

    def receive(self, timeout: float = 10.0) -> bytes:
        """The next message (CRLF keep-alive answers skipped)."""
        while True:
            data = read_response(self.sock, timeout).lstrip(b"\r\n")
            if data:
                return data

    def register(
        self,
        number: str = "7001",
        expires: int = 300,
        *,
        outbound: bool = False,
        reg_id: int = 1,
    ) -> bytes:
        """REGISTER and return the final response."""
        self.cseq += 1
        contact = f"<sip:{number}@127.0.0.1:{self.local_port};transport=tls"
        contact += f';ob>;+sip.instance="{INSTANCE}";reg-id={reg_id}' if outbound else ">"
        supported = "Supported: outbound\n" if outbound else ""
        self.send(
            f"REGISTER sip:{SERVER_FQDN} SIP/2.0\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:{self.local_port};branch=z9hG4bK{uuid.uuid4().hex};rport\n"
            f"From: <sip:{number}@{SERVER_FQDN}>;tag=p{self.cseq}\n"
            f"To: <sip:{number}@{SERVER_FQDN}>\n"
            f"Call-ID: {self.call_id}\nCSeq: {self.cseq} REGISTER\nMax-Forwards: 70\n"
            f"Contact: {contact}\nExpires: {expires}\n{supported}Content-Length: 0\n\n"
        )
        while True:
            response = self.receive()
            if not response.startswith(b"SIP/2.0 1"):
                return response

    def reply(self, request: bytes, status: int, reason: str) -> None:
        """A response to a request received, with its Vias, Record-Route and our To tag."""
        lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
        keep = ("via", "from", "call-id", "cseq", "record-route", "v", "f", "i")
        copied = [line for line in lines if line.split(":", 1)[0].strip().lower() in keep]
        to = next(line for line in lines if line.split(":", 1)[0].strip().lower() in ("to", "t"))
        if ";tag=" not in to:
            to += ";tag=phone"
        contact = f"Contact: <sip:phone@127.0.0.1:{self.local_port};transport=tls>"
        self.send(
            f"SIP/2.0 {status} {reason}\n"
            + "\n".join([*copied, to, contact])
            + "\nContent-Length: 0\n\n"
        )
