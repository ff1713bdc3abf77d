"""The outside fuzzer's numbers, through real sockets: every numeric header and parameter
(CSeq, Content-Length, Max-Forwards, Expires, rport, reg-id, the Contact's expires) given
digits from other scripts, signs, spaces and 5,000-digit values, from an allow-listed
gateway over UDP and over mutual TLS. Each is answered or dropped; none becomes an
`internal_error` (the probe counted 109 over UDP and 112 over TLS)."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl

import pytest

from tests.configs import peer
from tests.e2e.conftest import SERVER_FQDN, Pki, StartServer
from tests.e2e.sip_client import options, status_line, udp_exchange
from tests.e2e.test_tls import client_context

pytestmark = pytest.mark.e2e

BAD_NUMBERS = [
    "²", "³", "٣٠٠", "߃", "\U0001d7d8\U0001d7d9", "\uff11\uff12", "-1", "+5", " 7 7", "0x10", "1e3", "1.5", "",
    "9" * 5000, "3" * 20, "٣", "\u0e53\u0e50", "00000000000000000000001",
]  # fmt: skip


def case(rng: random.Random, port: int, transport: str, n: int) -> bytes:
    bad = rng.choice(BAD_NUMBERS)
    field = rng.choice(
        ["cseq", "content-length", "max-forwards", "expires", "rport", "reg-id", "c-expires"]
    )
    method = "REGISTER" if field in ("expires", "reg-id", "c-expires") else "INVITE"
    cseq = bad if field == "cseq" else str(n + 1)
    max_forwards = bad if field == "max-forwards" else "70"
    rport = f"rport={bad}" if field == "rport" else "rport"
    expires = f"Expires: {bad}\r\n" if field == "expires" else ""
    contact = "<sip:7001@127.0.0.1:5099;ob>"
    if field == "reg-id":
        contact += f';+sip.instance="<urn:uuid:00000000-0000-1000-8000-0000000000{n % 90 + 10}>";reg-id={bad}'
    if field == "c-expires":
        contact += f";expires={bad}"
    length = bad if field == "content-length" else "0"
    uri = f"sip:{SERVER_FQDN}" if method == "REGISTER" else f"sip:5{n:03d}@{SERVER_FQDN}"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5099;branch=z9hG4bKfz{n};{rport}\r\n"
        f"Max-Forwards: {max_forwards}\r\nFrom: <sip:7001@{SERVER_FQDN}>;tag=f{n}\r\n"
        f"To: <sip:7001@{SERVER_FQDN}>\r\nCall-ID: fuzz-{transport}-{n}\r\n"
        f"CSeq: {cseq} {method}\r\nContact: {contact}\r\n{expires}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_numbers_that_are_not_ascii_digits_never_make_an_internal_error(
    start_server: StartServer, pki: Pki
) -> None:
    phone = peer("phone1", kind="softphone", addresses=["127.0.0.1"], numbers=["7001"])
    server = start_server(extra_config=phone)
    port = server.sip_port
    rng = random.Random(23)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.15)
        for n in range(300):
            sock.sendto(case(rng, port, "UDP", n), ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                sock.recvfrom(65535)
    context = client_context(pki, pki.gw1, "gw1")
    tls: ssl.SSLSocket | None = None
    try:
        for n in range(300):
            if tls is None:
                raw = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
                tls = context.wrap_socket(raw, server_hostname=SERVER_FQDN)
                tls.settimeout(0.15)
            try:
                tls.sendall(case(rng, server.tls_port, "TLS", n))
                if not tls.recv(65535):
                    raise ConnectionResetError  # the server closed it (framing lost)
            except TimeoutError:
                pass
            except (OSError, ssl.SSLError):
                tls.close()
                tls = None
    finally:
        if tls is not None:
            tls.close()
    # Everything sent before is processed once this is answered.
    assert status_line(udp_exchange("127.0.0.1", port, options("127.0.0.1", port))) == (
        "SIP/2.0 200 OK"
    )
    assert server.events("internal_error") == []
    assert server.process.poll() is None
