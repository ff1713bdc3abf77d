"""A peer that stops reading: its own answers wait, other connections' traffic closes it.
Real loopback sockets driven by trio."""

from __future__ import annotations

import trio

from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.message import ParseLimits
from sipserver.transport.streams import StreamConnection


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return server, client


async def _nothing(*_: object) -> None:
    return None


async def test_traffic_for_a_peer_that_does_not_read_closes_it_past_the_byte_limit() -> None:
    server, client = await _pair()
    flow = Flow("tcp", ("127.0.0.1", 0), ("127.0.0.1", 1), 1)
    connection = StreamConnection(server, flow, None, queue_limit=65536)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run, ParseLimits(), 30.0, 30.0, _nothing, _nothing)
        chunk = Transmit(flow, b"x" * 16384)
        with trio.fail_after(10):
            # The kernel buffers take a few MB first; keep queueing until we are over.
            while connection.close_reason == "closed by peer":
                connection.queue(chunk)
                await trio.sleep(0)
    assert connection.close_reason.startswith(
        "send queue over 65536 bytes (limits.send_queue_bytes)"
    )
    await client.aclose()


async def test_own_answers_wait_for_room_then_time_out() -> None:
    server, client = await _pair()
    flow = Flow("tcp", ("127.0.0.1", 0), ("127.0.0.1", 1), 1)
    connection = StreamConnection(server, flow, None, queue_limit=65536)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run, ParseLimits(), 30.0, 30.0, _nothing, _nothing)
        with trio.fail_after(20):
            while connection.close_reason == "closed by peer":
                await connection.send(Transmit(flow, b"y" * 16384), timeout=0.5)
    assert connection.close_reason == "send queue stayed full for 0.5 s (limits.send_timeout)"
    await client.aclose()
