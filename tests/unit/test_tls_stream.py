"""TLSStream over a real socket pair: the handshake, then messages both ways, with the
memory BIOs renewed after the handshake."""

from __future__ import annotations

import trio
from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from sipserver.pki.select import Candidate
from sipserver.transport.tls_context import (
    build_client_context,
    build_server_context,
    new_client_connection,
    new_server_connection,
)
from sipserver.transport.tls_stream import TLSStream, renew_memory_bios
from tests.certs import make_ca, make_leaf

CA = make_ca("stream test CA")
SERVER = make_leaf(CA, dns=["sip.example.test"])
CLIENT = make_leaf(CA, dns=["gw1.example.test"])


def contexts() -> tuple[SSL.Context, SSL.Context]:
    server = build_server_context(
        Candidate.build("server", [SERVER.cert], SERVER.key), [CA.cert], "1.2"
    )
    client = build_client_context(
        Candidate.build("client", [CLIENT.cert], CLIENT.key), [CA.cert], "1.2"
    )
    return server, client


async def test_a_message_sent_with_the_handshakes_last_flight_is_not_lost() -> None:
    server_ctx, client_ctx = contexts()
    ours, theirs = trio.socket.socketpair()
    server = TLSStream(trio.SocketStream(ours), new_server_connection(server_ctx)[0])
    client = TLSStream(
        trio.SocketStream(theirs), new_client_connection(client_ctx, "sip.example.test")[0]
    )
    first = b"OPTIONS sip:sip.example.test SIP/2.0\r\n" * 40

    async def client_side() -> None:
        await client.do_handshake()
        await client.send_all(first)  # may reach the server with the client's Finished

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        await server.do_handshake()
        received = b""
        with trio.fail_after(5):
            while len(received) < len(first):
                received += await server.receive_some()
    assert received == first
    await server.send_all(b"SIP/2.0 200 OK\r\n\r\n")
    with trio.fail_after(5):
        assert await client.receive_some() == b"SIP/2.0 200 OK\r\n\r\n"


def test_renewed_bios_keep_unread_input_and_return_unsent_output() -> None:
    server_ctx, _ = contexts()
    connection, _record = new_server_connection(server_ctx)
    connection.bio_write(b"not read yet")
    before = connection._into_ssl
    assert renew_memory_bios(connection) == b""  # nothing was waiting to go out
    assert connection._into_ssl != before  # a new pair is in use
    # What was waiting to be read moved along, byte for byte.
    assert int(lib.BIO_get_mem_data(connection._into_ssl, ffi.NULL)) == len(b"not read yet")
    renewed = connection._into_ssl
    assert renew_memory_bios(connection) == b""  # and it can be renewed again
    assert connection._into_ssl != renewed
    assert int(lib.BIO_get_mem_data(connection._into_ssl, ffi.NULL)) == len(b"not read yet")


async def test_records_received_together_are_read_together() -> None:
    """A peer sends a record per message; one read gives the reader all the records that
    arrived, so what they lead to can be written out together."""
    server_ctx, client_ctx = contexts()
    ours, theirs = trio.socket.socketpair()
    server = TLSStream(trio.SocketStream(ours), new_server_connection(server_ctx)[0])
    client = TLSStream(
        trio.SocketStream(theirs), new_client_connection(client_ctx, "sip.example.test")[0]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        await server.do_handshake()
    messages = [f"MESSAGE {n}\r\n\r\n".encode() for n in range(5)]
    for message in messages:
        client.connection.send(message)  # a record each, not yet on the wire
    await client.send_all(b"")  # all five records in one write
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(ours)
        assert await server.receive_some() == b"".join(messages)
    # A limit still holds: what does not fit waits for the next read.
    for message in messages:
        client.connection.send(message)
    await client.send_all(b"")
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(ours)
        first = await server.receive_some(2 * len(messages[0]))
        assert first == b"".join(messages[:2])
        rest = b""
        while len(rest) < 3 * len(messages[0]):
            rest += await server.receive_some()
    assert rest == b"".join(messages[2:])
