"""What an outside probe found, kept fixed: attacker bytes never become metric series, and
bytes that are not UTF-8 never make a log line that a strict JSON parser rejects."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import urllib.request

import orjson
import pytest

from sipserver.server.repeats import reason_kind
from tests.e2e.conftest import Pki, RunningServer, StartServer
from tests.e2e.sip_client import options, read_response, status_line, udp_exchange
from tests.e2e.test_tls import client_context, tls_options

pytestmark = pytest.mark.e2e


def test_a_garbage_flood_creates_no_metric_series_and_the_server_still_answers(
    start_server: StartServer,
) -> None:
    server = start_server(extra_config='\n[admin]\naddress = "127.0.0.1:0"\n')
    port = server.sip_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in range(2000):  # every datagram starts with different "method" bytes
            sock.sendto(os.urandom(8) + f"{n} sip:x SIP/2.0\r\n\r\n".encode(), ("127.0.0.1", port))
    reply = udp_exchange("127.0.0.1", port, options("127.0.0.1", port))
    assert reply.startswith(b"SIP/2.0 200 OK")
    admin = server.wait_for("admin_listener_started")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    series = [line for line in metrics.splitlines() if line.startswith("sipserver_messages_total")]
    labels = {re.search(r'method_or_status="([^"]*)"', line).group(1) for line in series}  # type: ignore[union-attr]
    assert labels <= {"OPTIONS", "other", "2xx", "4xx"}, labels
    assert len(series) <= 8


def test_header_bytes_that_are_not_utf8_are_logged_as_valid_utf8(
    start_server: StartServer,
) -> None:
    server = start_server()
    port = server.sip_port
    message = options("127.0.0.1", port).replace(b"@test\r\n", b"@te\xff\xfest\r\n", 1)
    reply = udp_exchange("127.0.0.1", port, message)
    assert reply.startswith(b"SIP/2.0 200 OK")
    answered = server.wait_for("sip_request_answered", method="OPTIONS")
    assert answered["call_id"].endswith("@te\\xff\\xfest")
    for line in server.raw:  # orjson is strict: lone surrogates and bad UTF-8 are errors
        orjson.loads(line)


def test_a_refusal_storm_costs_a_few_log_lines_with_the_count(start_server: StartServer) -> None:
    server = start_server(log_extra="repeat_interval = 1.0")
    port = server.sip_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for _ in range(300):  # malformed (no Call-ID), answered 400, from one address
            sock.sendto(options("127.0.0.1", port, drop="Call-ID"), ("127.0.0.1", port))
            sock.recvfrom(65535)
    summary = server.wait_for("refusals_repeated", refusal="sip_request_malformed", timeout=10)
    assert summary["source"] == "127.0.0.1" and summary["reason"] == "Missing Call-ID"

    def accounted() -> int:
        """Refusals logged one by one plus those counted into summaries."""
        logged = [
            e for e in server.events("sip_request_malformed") if e["reason"] == "Missing Call-ID"
        ]
        counted = [
            e for e in server.events("refusals_repeated") if e["reason"] == "Missing Call-ID"
        ]
        return len(logged) + sum(int(e["count"]) for e in counted)

    server.wait_until(lambda _: accounted() == 300, 10, "all 300 refusals accounted for")
    logged = [e for e in server.events("sip_request_malformed") if e["reason"] == "Missing Call-ID"]
    assert 1 <= len(logged) <= 5  # one per second of the storm at most


def accounted(server: RunningServer, event: str, kind: str) -> int:
    """Refusals of one kind logged one by one plus those counted into summaries."""
    logged = [e for e in server.events(event) if reason_kind(e["reason"]) == kind]
    counted = [
        e
        for e in server.events("refusals_repeated")
        if e["refusal"] == event and e["reason"] == kind
    ]
    return len(logged) + sum(int(e["count"]) for e in counted)


def test_a_flood_of_different_bad_lines_is_summarised_as_one_kind(
    start_server: StartServer,
) -> None:
    """The text an attacker chooses does not make each refusal a new line to log."""
    server = start_server(log_extra="repeat_interval = 1.0")
    port = server.sip_port
    kind = "Malformed header line '…'"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for batch in range(10):  # in batches: the kernel must not drop what we count
            for n in range(batch * 50, batch * 50 + 50):
                data = options("127.0.0.1", port, extra=f"bad-line-{n}\r\n")
                sock.sendto(data, ("127.0.0.1", port))
            done = batch * 50 + 50

            def all_accounted(_: object, done: int = done) -> bool:
                return accounted(server, "sip_request_malformed", kind) == done

            server.wait_until(all_accounted, 10, f"{done} accounted")
    logged = server.events("sip_request_malformed")
    # One line per repeat interval at most (each batch waited for a summary): not 500.
    assert 1 <= len(logged) <= 11 and logged[0]["reason"] == "Malformed header line 'bad-line-0'"


def test_an_allow_listed_gateway_scanning_numbers_is_summarised(start_server: StartServer) -> None:
    """svcrack-like: a gateway calls 300 numbers no dial plan knows; each gets its 404
    with the reason, and the log says it a few times with the count."""
    server = start_server(log_extra="repeat_interval = 1.0")
    port = server.sip_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for n in range(300):
            invite = options("127.0.0.1", port, method="INVITE", uri=f"sip:{1000 + n}@127.0.0.1")
            sock.sendto(invite, ("127.0.0.1", port))
            while status_line(answer := sock.recvfrom(65535)[0]).startswith("SIP/2.0 1"):
                pass  # (a 404 read here may be an earlier one's retransmission: no ACK)
            assert status_line(answer).startswith("SIP/2.0 404"), answer
    first = server.wait_for("no_dial_plan")
    kind = reason_kind(first["reason"])
    assert first["reason"] == "No dial plan for number 1000 from peer gw1 (gw1.example.test)"
    assert kind == "No dial plan for number N from peer gwN (gwN.example.test)"
    server.wait_until(lambda _: accounted(server, "no_dial_plan", kind) == 300, 10, "all 300")
    assert 1 <= len(server.events("no_dial_plan")) <= 5


def test_an_sslv3_client_hello_is_refused_as_tls_parameters(start_server: StartServer) -> None:
    server = start_server()
    hello_body = (
        b"\x03\x00"
        + os.urandom(32)
        + b"\x00"
        + b"\x00\x06"
        + bytes.fromhex("002f0035000a")
        + b"\x01\x00"
    )
    handshake = b"\x01" + len(hello_body).to_bytes(3, "big") + hello_body
    record = b"\x16\x03\x00" + len(handshake).to_bytes(2, "big") + handshake
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as sock:
        sock.sendall(record)
        with contextlib.suppress(OSError):
            sock.recv(1024)
    refused = server.wait_for("tls_peer_refused")
    assert refused["reason"] == "tls_parameters_refused"
    assert "version too low" in refused["detail"]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("X-Long: " + "a" * 9000 + "\r\n", "Header line too long"),
        ("".join(f"X-H{n}: {n}\r\n" for n in range(300)), "Too many headers"),
    ],
)
def test_oversized_lines_and_too_many_headers_get_their_400(
    start_server: StartServer, transport: str, extra: str, reason: str
) -> None:
    server = start_server()
    port = server.sip_port
    message = options("127.0.0.1", port, transport.upper(), extra=extra)
    if transport == "udp":
        reply = udp_exchange("127.0.0.1", port, message)
    else:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(message)
            reply = read_response(sock)
    assert status_line(reply) == f"SIP/2.0 400 {reason}"


def test_a_70_kb_message_over_tcp_gets_its_513_before_the_connection_closes(
    start_server: StartServer,
) -> None:
    server = start_server()
    port = server.sip_port
    body = b"x" * 70000
    message = (
        options("127.0.0.1", port, "TCP").replace(
            b"Content-Length: 0\r\n\r\n", f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(message)
        reply = read_response(sock)
        assert status_line(reply) == "SIP/2.0 513 Message Too Large"
        sock.settimeout(5)
        assert sock.recv(1024) == b""  # then an orderly close (FIN), not a reset


def test_strangers_holding_connections_never_lock_an_allow_listed_peer_out(
    start_server: StartServer, pki: Pki
) -> None:
    # 127.0.0.1 is no peer's address here: plain TCP from it is a stranger.
    server = start_server(
        peer_addresses='"192.0.2.99"',
        limits="max_connections = 5\nmax_unverified_connections = 10\nunverified_idle_timeout = 30",
    )
    held = [socket.create_connection(("127.0.0.1", server.sip_port)) for _ in range(10)]
    try:
        server.wait_count("connection_opened", 10)
        # The strangers' budget is full: the oldest is evicted to admit the newcomer.
        held.append(socket.create_connection(("127.0.0.1", server.sip_port)))
        held[0].settimeout(5)
        assert held[0].recv(100) == b""
        evicted = server.wait_for("connection_evicted")
        assert "limits.max_unverified_connections" in evicted["reason"]
        # An allow-listed gateway over mutual TLS still gets in and is answered.
        reply = tls_options(server, client_context(pki, pki.gw1, "gw1"))
        assert status_line(reply) == "SIP/2.0 200 OK"
        # A stranger that sends a request gets its 403 and then the connection closes.
        stranger = held[1]
        stranger.sendall(options("127.0.0.1", server.sip_port, "TCP"))
        assert status_line(read_response(stranger)) == "SIP/2.0 403 Forbidden"
        stranger.settimeout(5)
        assert stranger.recv(100) == b""
    finally:
        for sock in held:
            sock.close()


def test_strangers_idle_in_tls_handshakes_never_lock_a_peer_out_of_tls(
    start_server: StartServer, pki: Pki
) -> None:
    """Three times an address's share of idle TLS connections from one stranger address:
    it only ever holds its share, and gw1 is answered every time, from its configured
    address (a budget of its own) and from the stranger's (it evicts the stranger's oldest
    idle connection)."""
    server = start_server(
        peer_addresses='"::1"',
        handshake_timeout=60,
        limits="max_unverified_connections = 20\nmax_unverified_per_address = 10",
    )
    held = [socket.create_connection(("127.0.0.1", server.tls_port)) for _ in range(30)]
    try:
        evicted = server.wait_count("connection_evicted", 20)
        assert evicted[0]["reason"] == (
            "evicted, the oldest of this address's 10 TLS handshakes, to admit its newer one "
            "(limits.max_unverified_per_address)"
        )
        context = client_context(pki, pki.gw1, "gw1")
        answered = [
            status_line(tls_options(server, context, host)) for host in ["::1", "127.0.0.1"] * 10
        ]
        assert answered == ["SIP/2.0 200 OK"] * 20
        for sock in held[:20]:  # the oldest went, the newest are held
            sock.settimeout(5)
            assert sock.recv(100) == b""
    finally:
        for sock in held:
            sock.close()
    assert server.events("connection_refused") == []


def test_a_silent_stranger_is_dropped_after_the_short_idle_limit(start_server: StartServer) -> None:
    server = start_server(peer_addresses='"192.0.2.99"', limits="unverified_idle_timeout = 0.5")
    with socket.create_connection(("127.0.0.1", server.sip_port)) as sock:
        sock.settimeout(5)
        assert sock.recv(100) == b""
    closed = server.wait_for("connection_closed")
    assert closed["reason"] == "idle for 0.5 s (limits.unverified_idle_timeout)"


def test_hundreds_of_malformed_requests_leave_the_server_answering(
    start_server: StartServer,
) -> None:
    """PROTOS-style, end to end: mutated INVITEs over UDP and one TCP connection (each
    answered, dropped or the connection closed), then valid requests are still answered."""
    import random

    server = start_server()
    port = server.sip_port
    valid = options("127.0.0.1", port, method="INVITE", uri="sip:+14255550100@sip.example.test")
    rng = random.Random(7)

    def mutated() -> bytes:
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at : at + rng.randint(0, 3)] = bytes(
                rng.randrange(256) for _ in range(rng.randint(0, 3))
            )
        return bytes(data)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(300):
            sock.sendto(mutated(), ("127.0.0.1", port))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as tcp,
        contextlib.suppress(OSError),
    ):
        for _ in range(100):
            tcp.sendall(mutated())
    for transport in ("UDP", "TCP"):
        probe = options("127.0.0.1", port, transport)
        if transport == "UDP":
            reply = udp_exchange("127.0.0.1", port, probe)
        else:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(probe)
                reply = read_response(sock)
        assert status_line(reply) == "SIP/2.0 200 OK"
    assert server.process.poll() is None and not server.events("internal_error")


def test_out_of_file_descriptors_the_server_says_so_once_and_accepts_again(
    start_server: StartServer,
) -> None:
    """EMFILE on accept: one accept_failed line (not one per retry), the connections that
    wait in the kernel's backlog are served once descriptors are free again."""
    server = start_server(
        open_files=64,
        limits="max_connections = 500\nmax_connections_per_address = 500",
    )
    held: list[socket.socket] = []
    try:
        for _ in range(80):  # more than 64 descriptors' worth: the kernel queues the rest
            held.append(socket.create_connection(("127.0.0.1", server.sip_port), timeout=5))
        failed = server.wait_for("accept_failed", timeout=10)
        assert failed["reason"] == os.strerror(24)  # EMFILE: "Too many open files"
        late = held[-1]  # still in the backlog, never accepted
        for sock in held[:-1]:
            sock.close()
        late.sendall(options("127.0.0.1", server.sip_port, "TCP", local_port=5098))
        assert status_line(read_response(late, timeout=10)) == "SIP/2.0 200 OK"
        resumed = server.wait_for("accept_resumed", timeout=10)
        assert resumed["failed_attempts"] >= 1
        assert len(server.events("accept_failed")) == 1
    finally:
        for sock in held:
            sock.close()
