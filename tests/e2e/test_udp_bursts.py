"""Datagrams that arrive together are handled together (several to a pass of the event
loop, a bounded number at a time): none is lost, each gets its own answer, in the order
they came, and a stream peer is served once they are. That the loop yields to other
tasks between batches is not tested here: it would take timing."""

from __future__ import annotations

import socket

import pytest

from sipserver.server.app import UDP_BATCH
from tests.e2e.conftest import StartServer
from tests.e2e.sip_client import header, options, read_response, status_line

pytestmark = pytest.mark.e2e


def test_a_burst_of_datagrams_is_answered_in_full_and_in_order(start_server: StartServer) -> None:
    server = start_server()
    port = server.sip_port
    burst = [options("127.0.0.1", port) for _ in range(3 * UDP_BATCH + 5)]
    sent = [header(message, "Call-ID") for message in burst]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(10)
        for message in burst:  # back to back: most wait in the kernel together
            sock.sendto(message, ("127.0.0.1", port))
        answers = [sock.recvfrom(65535)[0] for _ in burst]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stream:
            stream.sendall(options("127.0.0.1", port, "TCP"))
            assert status_line(read_response(stream)) == "SIP/2.0 200 OK"
    assert [status_line(answer) for answer in answers] == ["SIP/2.0 200 OK"] * len(burst)
    assert [header(answer, "Call-ID") for answer in answers] == sent
