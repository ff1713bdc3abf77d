"""A peer that stops reading: its own answers wait, other connections' traffic closes it.
The peer is the far end of a socket pair with small buffers that it never reads, so the
kernel soon refuses more; time is trio's virtual clock."""

from __future__ import annotations

import socket

import trio
import trio.testing

from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import ParseLimits
from sipserver.transport.connection import StreamConnection
from sipserver.transport.direct import PlainStream

FLOW = Flow(Transport.TCP, ("127.0.0.1", 5060), ("192.0.2.1", 40000), connection_id=1)
CHUNK = 16384


async def _nothing(*_: object) -> None:
    return None


async def _run(connection: StreamConnection, tasks: trio.Nursery) -> None:
    await connection.run(ParseLimits(), 300.0, 300.0, _nothing, _nothing, tasks=tasks)


def _stalled_peer() -> tuple[StreamConnection, trio.socket.SocketType]:
    """A connection whose peer never reads (keep the returned socket: it is that peer)."""
    ours, theirs = trio.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = PlainStream(trio.SocketStream(ours))
    return StreamConnection(stream, FLOW, None, queue_limit=4 * CHUNK), theirs


async def test_traffic_for_a_peer_that_does_not_read_closes_it_past_the_byte_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connection, _peer = _stalled_peer()
    queued = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, connection, nursery)
        await trio.testing.wait_all_tasks_blocked()
        while connection.close_reason == "closed by peer":
            connection.queue(Transmit(FLOW, b"x" * CHUNK))
            queued += 1
            assert queued < 100, "never closed"
            await trio.testing.wait_all_tasks_blocked()
    assert connection.close_reason.startswith(
        f"send queue over {4 * CHUNK} bytes (limits.send_queue_bytes)"
    )
    # What the kernel took, the chunk in the writer's send and four queued; then refused.
    assert connection.queued_bytes <= 4 * CHUNK
    assert queued >= 6
    assert trio.current_time() == 0  # closed at once, not after a timeout


async def test_own_answers_wait_for_room_then_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connection, _peer = _stalled_peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, connection, nursery)
        while connection.close_reason == "closed by peer":
            await connection.send(Transmit(FLOW, b"y" * CHUNK), timeout=0.5)
    assert connection.close_reason == "send queue stayed full for 0.5 s (limits.send_timeout)"
    assert trio.current_time() == 0.5


async def test_direct_writes_and_the_writer_keep_the_order_of_messages() -> None:
    """Messages go straight to the kernel while it has room, the rest through the writer
    task; whatever the split, the peer reads them in the order they were queued."""
    ours, theirs = trio.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # force partial writes
    stream = PlainStream(trio.SocketStream(ours))
    connection = StreamConnection(stream, FLOW, None, queue_limit=1 << 22)
    messages = [f"message {n:05d} ".encode() * 40 for n in range(300)]
    received = bytearray()
    peer = trio.SocketStream(theirs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, connection, nursery)
        await trio.testing.wait_all_tasks_blocked()
        for data in messages:
            connection.queue(Transmit(FLOW, data))
        with trio.fail_after(10):
            while len(received) < sum(map(len, messages)):
                received += await peer.receive_some(65536)
        nursery.cancel_scope.cancel()
    assert bytes(received) == b"".join(messages)


async def test_a_writer_task_exists_only_while_bytes_wait() -> None:
    """Thousands of idle peers: each connection is one task until the kernel refuses bytes,
    and its writer runs in the nursery it is given, not in one of its own."""
    ours, theirs = trio.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    connection = StreamConnection(PlainStream(trio.SocketStream(ours)), FLOW, None)
    peer = trio.SocketStream(theirs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, connection, nursery)
        await trio.testing.wait_all_tasks_blocked()
        reader_only = len(nursery.child_tasks)
        assert reader_only == 1
        connection.queue(Transmit(FLOW, b"small"))  # the kernel takes it at once
        assert len(nursery.child_tasks) == reader_only
        big = b"z" * (1 << 20)
        connection.queue(Transmit(FLOW, big))  # far more than the socket buffer
        assert len(nursery.child_tasks) == reader_only + 1
        received = bytearray()
        with trio.fail_after(10):
            while len(received) < len(big) + 5:
                received += await peer.receive_some(65536)
            await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == reader_only  # written out: the writer is gone
        nursery.cancel_scope.cancel()
    assert bytes(received) == b"small" + big


async def test_a_connection_that_ends_takes_its_writer_with_it() -> None:
    """The writer lives in a nursery that outlives the connection: when the connection
    ends with bytes still queued, run() returns only once the writer has let go."""
    connection, _peer = _stalled_peer()
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run_then_report() -> None:
            await _run(connection, nursery)
            done.set()

        nursery.start_soon(run_then_report)
        await trio.testing.wait_all_tasks_blocked()
        connection.queue(Transmit(FLOW, b"w" * 3 * CHUNK))  # more than the kernel takes
        await trio.testing.wait_all_tasks_blocked()
        assert len(nursery.child_tasks) == 2  # the reader and the writer
        connection.close("test over")
        with trio.fail_after(5):
            await done.wait()
        assert len(nursery.child_tasks) == 0
    assert connection.close_reason == "test over"
