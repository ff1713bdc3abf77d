"""A read that brings several messages is handled as a batch: what the batch produces for a
connection goes out in one write, in order, and nothing is held back beyond the batch (nor
by tasks the batch started). Real socket pairs; the writes are counted on the stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import ParseLimits
from sipserver.transport.connection import BATCH_MESSAGES, StreamConnection
from sipserver.transport.direct import PlainStream

INBOUND = Flow(Transport.TCP, ("127.0.0.1", 5060), ("192.0.2.1", 40000), connection_id=1)
OUTBOUND = Flow(Transport.TCP, ("127.0.0.1", 5060), ("192.0.2.2", 5060), connection_id=2)


def message(n: int) -> bytes:
    return f"OPTIONS sip:{n}@sip.example.test SIP/2.0\r\nContent-Length: 0\r\n\r\n".encode()


OnMessage = Callable[[StreamConnection, bytes], Awaitable[None]]


def forwarded(n: int) -> bytes:
    return f"forwarded {n};".encode()


class CountedStream(PlainStream):
    """PlainStream that records each write it takes without waiting."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.writes: list[bytes] = []

    def send_nowait(self, data: bytes) -> bool:
        self.writes.append(data)
        return super().send_nowait(data)


class Pair:
    """A connection we read from (its peer writes into `feed`) and one we forward to."""

    def __init__(self) -> None:
        ours, self.feed = trio.socket.socketpair()
        self.inbound = StreamConnection(PlainStream(trio.SocketStream(ours)), INBOUND, None)
        out, self.far_end = trio.socket.socketpair()
        self.out_stream = CountedStream(trio.SocketStream(out))
        self.outbound = StreamConnection(self.out_stream, OUTBOUND, None)

    async def run(self, on_message: OnMessage, nursery: trio.Nursery) -> None:
        async def nothing(_: StreamConnection, __: bytes) -> None:
            return None

        nursery.start_soon(self._run, self.outbound, nothing, nursery)
        nursery.start_soon(self._run, self.inbound, on_message, nursery)
        await trio.testing.wait_all_tasks_blocked()

    @staticmethod
    async def _run(
        connection: StreamConnection, on_message: OnMessage, tasks: trio.Nursery
    ) -> None:
        async def framing_lost(*_: object) -> None:
            raise AssertionError("the test's messages are well framed")

        await connection.run(ParseLimits(), 300.0, 300.0, on_message, framing_lost, tasks=tasks)

    async def received(self, size: int) -> bytes:
        data = b""
        with trio.fail_after(5):
            while len(data) < size:
                data += await self.far_end.recv(65536)
        return data


def number(data: bytes) -> int:
    return int(data.split(b"sip:", 1)[1].split(b"@", 1)[0])


async def test_the_answers_to_a_batch_go_out_in_one_write_in_order() -> None:
    pair = Pair()

    async def forward(_: StreamConnection, data: bytes) -> None:
        pair.outbound.queue(Transmit(OUTBOUND, forwarded(number(data))))
        await trio.lowlevel.checkpoint()  # other tasks run in the middle of a batch

    async with trio.open_nursery() as nursery:
        await pair.run(forward, nursery)
        await pair.feed.send(b"".join(message(n) for n in range(5)))  # one read, five messages
        expected = b"".join(forwarded(n) for n in range(5))
        assert await pair.received(len(expected)) == expected
        assert pair.out_stream.writes == [expected]
        # A read with one message: its answer is written at once, on its own.
        await pair.feed.send(message(7))
        assert await pair.received(len(forwarded(7))) == forwarded(7)
        assert pair.out_stream.writes[1:] == [forwarded(7)]
        nursery.cancel_scope.cancel()


async def test_a_long_batch_is_written_every_few_messages() -> None:
    pair = Pair()

    async def forward(_: StreamConnection, data: bytes) -> None:
        pair.outbound.queue(Transmit(OUTBOUND, forwarded(number(data))))

    count = 3 * BATCH_MESSAGES
    async with trio.open_nursery() as nursery:
        await pair.run(forward, nursery)
        await pair.feed.send(b"".join(message(n) for n in range(count)))
        expected = b"".join(forwarded(n) for n in range(count))
        assert await pair.received(len(expected)) == expected
        # Never more than BATCH_MESSAGES answers wait; far fewer writes than messages.
        assert 3 <= len(pair.out_stream.writes) <= 4
        assert all(write.count(b"forwarded") <= BATCH_MESSAGES for write in pair.out_stream.writes)
        nursery.cancel_scope.cancel()


async def test_bytes_from_another_task_keep_their_place_behind_held_ones() -> None:
    pair = Pair()
    other_sent = trio.Event()

    async def from_another_task() -> None:
        pair.outbound.queue(Transmit(OUTBOUND, b"timer;"))  # e.g. a retransmission
        other_sent.set()

    async def forward(_: StreamConnection, data: bytes) -> None:
        n = number(data)
        pair.outbound.queue(Transmit(OUTBOUND, forwarded(n)))
        if n == 1:
            nursery.start_soon(from_another_task)
            await other_sent.wait()

    async with trio.open_nursery() as nursery:
        await pair.run(forward, nursery)
        await pair.feed.send(b"".join(message(n) for n in range(3)))
        expected = forwarded(0) + forwarded(1) + b"timer;" + forwarded(2)
        assert await pair.received(len(expected)) == expected
        assert pair.out_stream.writes == [expected]
        nursery.cancel_scope.cancel()


async def test_a_task_started_during_a_batch_does_not_hold_bytes_back() -> None:
    """trio copies the context into a task it starts: such a task must not take the batch's
    place and hold its bytes for a batch that has long ended."""
    pair = Pair()
    later = trio.Event()

    async def sends_later() -> None:
        await later.wait()
        pair.outbound.queue(Transmit(OUTBOUND, b"later;"))

    async def forward(_: StreamConnection, data: bytes) -> None:
        if number(data) == 0:
            nursery.start_soon(sends_later)
        pair.outbound.queue(Transmit(OUTBOUND, forwarded(number(data))))

    async with trio.open_nursery() as nursery:
        await pair.run(forward, nursery)
        await pair.feed.send(message(0) + message(1))
        batch = forwarded(0) + forwarded(1)
        assert await pair.received(len(batch)) == batch
        later.set()
        assert await pair.received(len(b"later;")) == b"later;"
        assert pair.out_stream.writes == [batch, b"later;"]
        nursery.cancel_scope.cancel()


async def test_bytes_held_for_a_connection_that_ends_meanwhile_are_dropped() -> None:
    pair = Pair()

    async def forward(_: StreamConnection, data: bytes) -> None:
        pair.outbound.queue(Transmit(OUTBOUND, forwarded(number(data))))
        if number(data) == 0:
            pair.outbound.close("ended during the batch")
            await trio.testing.wait_all_tasks_blocked()  # its run() has returned
            assert pair.outbound.ended

    async with trio.open_nursery() as nursery:
        await pair.run(forward, nursery)
        await pair.feed.send(message(0) + message(1))
        await trio.testing.wait_all_tasks_blocked()
        assert pair.out_stream.writes == []  # nothing written to the ended connection
        assert pair.outbound.queued_bytes == 0  # nor left queued for a writer that is gone
        nursery.cancel_scope.cancel()
