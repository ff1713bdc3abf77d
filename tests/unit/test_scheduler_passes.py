"""Reads and UDP sends take no more passes of trio's scheduler than they need: a read that
had to wait for bytes returns in the step that wakes it (the wait was its schedule point),
a read that finds bytes at once is still a schedule point, and a datagram goes out without
yielding. Real socket pairs; the reading task's steps are counted by a trio Instrument."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from sipserver.transport.direct import raw_socket, receive_some, send_datagram_now


class StepCounter(trio.abc.Instrument):
    """How many times trio ran a step of the watched task."""

    def __init__(self) -> None:
        self.watched: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.watched:
            self.steps += 1


@contextlib.contextmanager
def watching_this_task() -> Iterator[StepCounter]:
    """Counts the steps of the current task after the first (the one running now)."""
    counter = StepCounter()
    counter.watched = trio.lowlevel.current_task()
    trio.lowlevel.add_instrument(counter)
    try:
        yield counter
    finally:
        trio.lowlevel.remove_instrument(counter)


def stream_pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = trio.socket.socketpair()
    raw = raw_socket(ours)
    assert raw is not None
    return raw, theirs._sock  # type: ignore[attr-defined]


async def test_a_read_that_waited_returns_in_the_step_that_wakes_it() -> None:
    ours, theirs = stream_pair()
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    received: list[bytes] = []

    async def reader() -> None:
        counter.watched = trio.lowlevel.current_task()
        received.append(await receive_some(ours, 100))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # the reader waits for bytes
            counter.steps = 0
            theirs.send(b"INVITE")
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert received == [b"INVITE"]
    assert counter.steps == 1  # woken, read, returned: no second trip through the loop


async def test_a_read_that_finds_bytes_at_once_is_still_a_schedule_point() -> None:
    ours, theirs = stream_pair()
    theirs.send(b"BYE")
    with watching_this_task() as counter:
        assert await receive_some(ours, 100) == b"BYE"
    assert counter.steps == 1  # it yielded once: resumed in a step of its own


async def test_a_read_in_a_cancelled_scope_raises_even_with_bytes_waiting() -> None:
    ours, theirs = stream_pair()
    theirs.send(b"ACK")
    with trio.CancelScope() as scope:
        scope.cancel()
        await receive_some(ours, 100)
    assert scope.cancelled_caught
    assert await receive_some(ours, 100) == b"ACK"  # the cancelled read took nothing


async def test_a_datagram_goes_out_without_yielding() -> None:
    sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, receiver:
        await receiver.bind(("127.0.0.1", 0))
        with watching_this_task() as counter:
            assert send_datagram_now(sender, b"OPTIONS", receiver.getsockname())
        assert counter.steps == 0  # no schedule point in the send
        with trio.fail_after(5):
            data, _ = await receiver.recvfrom(100)
        assert data == b"OPTIONS"


async def test_a_datagram_to_an_address_of_the_other_family_raises_as_trio_would() -> None:
    sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, pytest.raises(OSError):
        send_datagram_now(sender, b"OPTIONS", ("::1", 5060))
