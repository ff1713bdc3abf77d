#!/usr/bin/env python3
"""The floor under sipserver's CPU per call: the same calls carried by a process that does
no SIP work at all.

It listens where the server would (UDP and TCP on --sip-port, mutual TLS on --tls-port)
and moves bytes between the caller and the callee with sipserver's own I/O: trio, the
`TLSStream` over pyOpenSSL with the server's TLS context, `PlainStream`, the direct sends
that skip trio's scheduler, UDP read in batches as the server reads it. No framing,
parsing, routing, transactions, dialogs, events or log lines: a datagram from the callee
goes to the last caller, any other datagram to the callee; a stream connection gets a
TCP connection of its own to the callee, and bytes are copied both ways.

`--io plain` does the same on a bare epoll loop (`selectors`, blocking sockets read only
when epoll says they are readable, pyOpenSSL over the socket) without trio: what the
interpreter and the system calls cost alone.

`--io plain --core` puts sipserver's core (`SipCore`, compiled as installed) in that loop
for UDP: each datagram goes through `receive_datagram` and what it returns is sent, its
timers run when due, its events are taken and dropped. That is sipserver without its
shell: the interpreter, the system calls and the core.

The calls still complete (the callee answers where the request came from, and the caller
sends its ACK and BYE to the relay), so `call_rate.py --proxy relay` measures this
process's CPU per call on the same harness as sipserver and Kamailio. Whatever it costs,
sipserver cannot cost less while it is built on the same interpreter and I/O layer.

    python bench/call_rate.py --proxy relay --transports mtls-tcp,udp --rates 300,800
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import trio
from _common import peers_and_plan
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL

from sipserver.config.loader import parse_config
from sipserver.pki.select import Candidate
from sipserver.proxy.core import SipCore
from sipserver.server.collector import tune_for_serving
from sipserver.sip.flow import Flow, Transport
from sipserver.transport.direct import PlainStream, raw_socket, send_datagram_now
from sipserver.transport.tls_context import build_server_context, new_server_connection
from sipserver.transport.tls_stream import TLSStream

UDP_BATCH = 16  # as sipserver.server.app: datagrams handled in one step, then a checkpoint
HANDSHAKE_SECONDS = 10.0


async def relay_datagrams(sock: trio.socket.SocketType, callee: tuple[str, int]) -> None:
    """As the server's UDP loop: read until the socket is empty, wait in epoll only then,
    and yield after UDP_BATCH datagrams in a row."""
    raw = raw_socket(sock)
    assert raw is not None
    caller: tuple[str, int] | None = None
    handled = 0
    while True:
        try:
            data, source = raw.recvfrom(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(raw)
            handled = 0
            continue
        if source[:2] != callee:
            caller = source[:2]
            to: tuple[str, int] | None = callee
        else:
            to = caller
        if to is not None and not send_datagram_now(sock, data, to):
            await sock.sendto(data, to)
        handled += 1
        if handled >= UDP_BATCH:
            await trio.lowlevel.checkpoint()
            handled = 0


Direct = PlainStream | TLSStream


async def pump(source: Direct, sink: Direct) -> None:
    """Copy until `source` ends, straight to the kernel when the sink has room."""
    while data := bytes(await source.receive_some(65536)):
        if not sink.send_nowait(data):
            await sink.send_all(data)
        elif sink.has_unsent:
            await sink.send_all(b"")  # what the kernel did not take at once


async def relay_stream(caller: Direct, callee_port: int, nursery: trio.Nursery) -> None:
    callee = PlainStream(await trio.open_tcp_stream("127.0.0.1", callee_port))
    nursery.start_soon(pump, callee, caller)
    await pump(caller, callee)


@contextlib.contextmanager
def ending_quietly() -> Iterator[None]:
    """A connection that fails (a peer gone, a refused handshake) ends alone, said on
    stderr, and the relay carries on."""
    try:
        yield
    except (
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        trio.TooSlowError,
        SSL.Error,
        OSError,
    ) as exc:
        print(f"connection ended: {exc!r}", file=sys.stderr, flush=True)


def serve_plain(args: argparse.Namespace, context: SSL.Context) -> None:
    """The relay without trio: one epoll loop, a callback per readable socket."""
    selector = selectors.EpollSelector()
    callee = ("127.0.0.1", args.callee_port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", args.sip_port))
    udp.setblocking(False)
    caller: list[tuple[str, int]] = []

    def datagrams() -> None:
        while True:
            try:
                data, source = udp.recvfrom(65536)
            except BlockingIOError:
                return
            if source[:2] != callee:
                caller[:] = [source[:2]]
                udp.sendto(data, callee)
            elif caller:
                udp.sendto(data, caller[0])

    local = ("127.0.0.1", args.sip_port)
    core = core_for(args) if args.core else None

    def through_core() -> None:
        assert core is not None
        while True:
            try:
                data, source = udp.recvfrom(65536)
            except BlockingIOError:
                return
            flow = Flow(Transport.UDP, local, (source[0], source[1]))
            for transmit in core.receive_datagram(data, flow, time.monotonic()):
                udp.sendto(transmit.data, transmit.flow.remote)
            core.take_events()

    def copy(source: socket.socket | SSL.Connection, sink: socket.socket | SSL.Connection) -> None:
        try:
            data = source.recv(65536)
            while isinstance(source, SSL.Connection) and source.pending():
                data += source.recv(65536)
        except SSL.WantReadError:
            return
        except (OSError, SSL.Error):
            data = b""
        if data:
            sink.sendall(data)
            return
        for end in (source, sink):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(end)
            end.close()

    def accept(listener: socket.socket, secured: bool) -> None:
        sock, _ = listener.accept()
        # As trio's streams: without it Nagle holds back each message's last segment.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer: socket.socket | SSL.Connection = sock
        if secured:
            peer = SSL.Connection(context, sock)
            peer.set_accept_state()
            try:
                peer.do_handshake()
            except SSL.Error as exc:
                print(f"connection ended: {exc!r}", file=sys.stderr, flush=True)
                sock.close()
                return
        far = socket.create_connection(callee)
        far.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(peer, selectors.EVENT_READ, lambda: copy(peer, far))
        selector.register(far, selectors.EVENT_READ, lambda: copy(far, peer))

    selector.register(udp, selectors.EVENT_READ, through_core if core else datagrams)
    for port, secured in ((args.sip_port, False), (args.tls_port, True)):
        listener = socket.create_server(("127.0.0.1", port))
        selector.register(
            listener, selectors.EVENT_READ, lambda on=listener, s=secured: accept(on, s)
        )
    print("ready", flush=True)
    while True:
        deadline = core.next_deadline() if core else None
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        for key, _ in selector.select(wait):
            key.data()
        if core and deadline is not None and time.monotonic() >= deadline:
            for transmit in core.handle_timers(time.monotonic()):
                udp.sendto(transmit.data, transmit.flow.remote)
            core.take_events()


def core_for(args: argparse.Namespace) -> SipCore:
    """The core configured as call_rate.py configures the server for UDP calls."""
    config = parse_config(
        '[server]\nfqdn = "sip.example.test"\naddresses = ["127.0.0.1"]\n'
        + peers_and_plan(args.callee_port, "udp")
    )
    core = SipCore(config, entropy=os.urandom)
    core.set_ports(args.sip_port, args.tls_port)
    tune_for_serving()
    return core


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--callee-port", type=int, required=True)
    parser.add_argument("--certificate", type=Path, required=True, help="PEM, the server's")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument(
        "--ca", type=Path, required=True, help="the CA callers' certificates chain to"
    )
    parser.add_argument(
        "--io",
        choices=("trio", "plain"),
        default="trio",
        help="trio with sipserver's transport (the default), or a bare epoll loop",
    )
    parser.add_argument(
        "--core", action="store_true", help="with --io plain: UDP through sipserver's core"
    )
    args = parser.parse_args()
    if args.core and args.io != "plain":
        parser.error("--core runs on the bare loop: --io plain")
    chain = x509.load_pem_x509_certificates(args.certificate.read_bytes())
    key = load_pem_private_key(args.key.read_bytes(), None)
    ca = x509.load_pem_x509_certificates(args.ca.read_bytes())
    context = build_server_context(Candidate.build("relay", chain, key), ca, "1.2")  # type: ignore[arg-type]

    if args.io == "plain":
        serve_plain(args, context)
        return 0

    async def serve() -> None:
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", args.sip_port))
        tcp = await trio.open_tcp_listeners(args.sip_port, host="127.0.0.1")
        tls = await trio.open_tcp_listeners(args.tls_port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:

            async def plain(stream: trio.SocketStream) -> None:
                with ending_quietly():
                    async with trio.open_nursery() as calls:
                        await relay_stream(PlainStream(stream), args.callee_port, calls)

            async def mutual_tls(stream: trio.SocketStream) -> None:
                with ending_quietly():
                    secured = TLSStream(stream, new_server_connection(context)[0])
                    with trio.fail_after(HANDSHAKE_SECONDS):
                        await secured.do_handshake()
                    async with trio.open_nursery() as calls:
                        await relay_stream(secured, args.callee_port, calls)

            nursery.start_soon(relay_datagrams, udp, ("127.0.0.1", args.callee_port))
            nursery.start_soon(trio.serve_listeners, plain, tcp)
            nursery.start_soon(trio.serve_listeners, mutual_tls, tls)
            print("ready", flush=True)

    trio.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
