"""Interop: sipp (sip-tester) and sipsak against the plain SIP port over UDP and TCP on
127.0.0.1 and ::1: OPTIONS, refusals, malformed input and limits. (Full call flows with sipp
on both sides are in tests/e2e/test_proxy_calls.py.)"""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.e2e.conftest import SCENARIOS, StartServer, need
from tests.e2e.sip_client import header, options, read_response, status_line, udp_exchange

pytestmark = pytest.mark.e2e


def sipp(
    host: str, port: int, transport: str, calls: int = 50, rate: int = 50
) -> subprocess.CompletedProcess[str]:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return subprocess.run(
        [
            need("sipp"),
            "-sf",
            str(SCENARIOS / "options_uac.xml"),
            "-t",
            transport,
            "-i",
            host,
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-timeout",
            "20s",
            "-timeout_error",
            "-nostdin",
            target,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_get_200(start_server: StartServer, host: str, transport: str) -> None:
    server = start_server()
    result = sipp(host, server.sip_port, transport)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    answered = server.wait_count("sip_request_answered", 50, method="OPTIONS")
    assert len(answered) >= 50 and all(e["status"] == 200 for e in answered)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsak_options_get_200(start_server: StartServer, transport: str) -> None:
    server = start_server()
    result = subprocess.run(
        [need("sipsak"), "-vv", "-s", f"sip:127.0.0.1:{server.sip_port}", "-E", transport],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIP/2.0 200 OK" in result.stdout
    assert "Allow: INVITE" in result.stdout and "Server: sipserver" in result.stdout
    assert "Server: sipserver/" not in result.stdout  # no version for scanners to match
    server.wait_for("sip_request_answered", method="OPTIONS", status=200, transport=transport)


def test_unknown_source_gets_403_with_warning_from_sipsak(start_server: StartServer) -> None:
    server = start_server(peer_addresses='"::1"')
    result = subprocess.run(
        [need("sipsak"), "-vv", "-s", f"sip:127.0.0.1:{server.sip_port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "SIP/2.0 403 Forbidden" in result.stdout
    assert (
        'Warning: 399 sip.example.test "Source address 127.0.0.1 is not an address' in result.stdout
    )
    event = server.wait_for("sip_request_refused", reason="unknown_source")
    assert event["remote"].startswith("127.0.0.1:")


def test_unknown_source_dropped_when_configured(start_server: StartServer) -> None:
    server = start_server(peer_addresses='"::1"', server_extra='unknown_source = "drop"')
    with pytest.raises(TimeoutError):
        udp_exchange(
            "127.0.0.1", server.sip_port, options("127.0.0.1", server.sip_port), timeout=1.0
        )
    server.wait_for("sip_request_refused", action="dropped")


@pytest.mark.parametrize(
    ("drop", "extra", "expected"),
    [
        ("Call-ID", "", "SIP/2.0 400 Missing Call-ID"),
        ("CSeq", "", "SIP/2.0 400 Missing CSeq"),
        ("", "Require: no-such-extension\r\n", "SIP/2.0 420 Bad Extension"),
    ],
)
def test_malformed_udp_requests_get_a_precise_answer_and_the_server_carries_on(
    start_server: StartServer, drop: str, extra: str, expected: str
) -> None:
    server = start_server()
    port = server.sip_port
    reply = udp_exchange("127.0.0.1", port, options("127.0.0.1", port, drop=drop, extra=extra))
    assert status_line(reply) == expected
    if "420" in expected:
        assert header(reply, "Unsupported") == "no-such-extension"
    for garbage in (b"\x00\xff" * 300, b"INVITE\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(garbage, ("127.0.0.1", port))
    assert (
        status_line(udp_exchange("127.0.0.1", port, options("127.0.0.1", port))) == "SIP/2.0 200 OK"
    )
    assert sipp("127.0.0.1", port, "u1", calls=5).returncode == 0


def test_version_scheme_and_method_errors(start_server: StartServer) -> None:
    server = start_server()
    port = server.sip_port
    base = options("127.0.0.1", port)
    cases = {
        base.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1): "SIP/2.0 505 Version Not Supported",
        options(
            "127.0.0.1", port, uri="tel:+14255550100"
        ): "SIP/2.0 416 Unsupported URI Scheme 'tel'",
        options("127.0.0.1", port, method="FROB"): "SIP/2.0 501 Not Implemented",
        options("127.0.0.1", port, method="INVITE", uri="sip:+1425@sip.example.test").replace(
            b"Max-Forwards: 70", b"Max-Forwards: 0"
        ): "SIP/2.0 483 Too Many Hops",
    }
    for data, expected in cases.items():
        assert status_line(udp_exchange("127.0.0.1", port, data)) == expected


def test_tcp_framing_loss_gets_400_then_close_while_other_clients_continue(
    start_server: StartServer,
) -> None:
    server = start_server()
    port = server.sip_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(options("127.0.0.1", port, "TCP").replace(b"Content-Length: 0\r\n", b""))
        reply = read_response(sock)
        assert status_line(reply) == "SIP/2.0 400 Missing Content-Length"
        assert sock.recv(100) == b""  # closed after the answer
    server.wait_for("connection_closed", reason="framing lost: Missing Content-Length")
    assert sipp("127.0.0.1", port, "t1", calls=5).returncode == 0


def test_tcp_keepalive_ping_gets_pong_and_messages_share_a_connection(
    start_server: StartServer,
) -> None:
    server = start_server()
    port = server.sip_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\r\n\r\n")
        assert sock.recv(10) == b"\r\n"
        for _ in range(3):
            sock.sendall(options("127.0.0.1", port, "TCP"))
            assert status_line(read_response(sock)) == "SIP/2.0 200 OK"


def test_idle_connection_is_closed(start_server: StartServer) -> None:
    server = start_server(limits="idle_timeout = 0.5")
    with socket.create_connection(("127.0.0.1", server.sip_port), timeout=5) as sock:
        assert sock.recv(10) == b""
    event = server.wait_for("connection_closed", transport="tcp")
    assert event["reason"] == "idle for 0.5 s (limits.idle_timeout)"


def test_per_address_connection_cap(start_server: StartServer) -> None:
    server = start_server(limits="max_connections_per_address = 2")
    port = server.sip_port
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    second = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        server.wait_until(
            lambda e: len(server.events("connection_opened")) >= 2, 10, "two connections"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(10) == b""
        event = server.wait_for("connection_refused")
        assert "limits.max_connections_per_address" in event["reason"]
        first.sendall(options("127.0.0.1", port, "TCP"))
        assert status_line(read_response(first)) == "SIP/2.0 200 OK"
    finally:
        first.close()
        second.close()


def test_oversized_datagram_is_dropped_and_logged(start_server: StartServer) -> None:
    server = start_server(limits="max_message_bytes = 2000")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(
            options("127.0.0.1", server.sip_port, extra="X-Pad: " + "a" * 3000 + "\r\n"),
            ("127.0.0.1", server.sip_port),
        )
    server.wait_for("sip_datagram_too_large", limit=2000)
