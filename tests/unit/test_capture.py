"""The HEP capture's queue and sender, through real loopback sockets: packets reach a TCP
collector in order; a collector that is down or a full queue costs drops, counted, and
never an error or a wait for the caller; a filter keeps only the methods asked for."""

from __future__ import annotations

import socket
import struct

import trio

from sipserver.config.loader import parse_config
from sipserver.server import capture as capture_module
from sipserver.server.capture import HepCapture
from sipserver.server.live_config import LiveConfig

INVITE = b"INVITE sip:5000@x SIP/2.0\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"
OPTIONS = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: c2\r\nCSeq: 1 OPTIONS\r\n\r\n"


def settings(hep: str, methods: str = "") -> HepCapture:
    config = parse_config(
        f'[server]\nfqdn = "sip.example.test"\n[capture]\nhep = "{hep}"\n{methods}'
    )
    return HepCapture(LiveConfig(config))


def payloads(stream: bytes) -> list[bytes]:
    """The SIP payload (chunk 15) of each HEP packet in a stream of them."""
    found = []
    while stream:
        assert stream[:4] == b"HEP3"
        (length,) = struct.unpack("!H", stream[4:6])
        packet, stream = stream[6:length], stream[length:]
        while packet:
            _, kind, size = struct.unpack("!HHH", packet[:6])
            if kind == 0x000F:
                found.append(packet[6:size])
            packet = packet[size:]
    return found


def test_a_tcp_collector_gets_every_message_in_order_and_the_filter_holds() -> None:
    async def main() -> list[bytes]:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        sender = settings(f"tcp:127.0.0.1:{port}", 'methods = ["INVITE"]\n')
        received = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            for message in (INVITE, OPTIONS, OK, b"\r\n\r\n"):
                sender.capture("tls", ("127.0.0.1", 5061), ("192.0.2.10", 40000), message)
            stream = await listener.accept()
            with trio.fail_after(5):
                while not (_whole(received) and len(payloads(received)) >= 2):
                    received += await stream.receive_some()
            assert sender.dropped == 0
            nursery.cancel_scope.cancel()
        return payloads(received)

    assert trio.run(main) == [INVITE, OK]  # OPTIONS filtered out, the keep-alive not SIP


def _whole(stream: bytes) -> bool:
    while stream:
        if len(stream) < 6:
            return False
        (length,) = struct.unpack("!H", stream[4:6])
        if len(stream) < length:
            return False
        stream = stream[length:]
    return True


def test_a_collector_that_is_down_and_a_full_queue_cost_drops_only() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused

    async def main() -> HepCapture:
        sender = settings(f"tcp:127.0.0.1:{port}")
        for _ in range(capture_module.QUEUE + 10):  # more than the queue holds
            sender.capture("udp", ("127.0.0.1", 5060), ("192.0.2.10", 5060), INVITE)
        assert sender.dropped == 10  # at once, in the caller's task, which never waits
        await sender.flush()  # the collector refuses the connection: all of them dropped
        return sender

    sender = trio.run(main)
    assert sender.sent == 0 and sender.dropped == capture_module.QUEUE + 10
