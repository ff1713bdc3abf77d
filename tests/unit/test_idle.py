"""Idle timeouts kept by one task for every connection, and close() from another task
waking a reader that waits on its socket. Time is trio's virtual clock."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import trio
import trio.testing

from sipserver.sip.flow import Flow, Transport
from sipserver.sip.message import ParseLimits
from sipserver.transport.connection import StreamConnection
from sipserver.transport.direct import PlainStream
from sipserver.transport.idle import IdleTimer

FLOW = Flow(Transport.TCP, ("127.0.0.1", 5060), ("192.0.2.1", 40000), connection_id=7)


class Idler:
    def __init__(
        self, connection_id: int, deadline: float, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.connection_id = connection_id
        self.idle_deadline = deadline
        self.expired_at: float | None = None
        self.expired = trio.Event()
        self.ended = False
        self._clock = clock

    def idle_expired(self) -> None:
        self.expired_at = self._clock()
        self.expired.set()


def test_each_connection_expires_at_its_own_deadline_and_reads_push_it_back() -> None:
    timer = IdleTimer()
    quiet, busy, gone, forever = (
        Idler(n, deadline, clock=lambda: 0.0)
        for n, deadline in enumerate((10.0, 10.0, 5.0, math.inf))
    )
    for idler in (quiet, busy, gone, forever):
        timer.watch(idler)
    assert len(timer) == 3  # no deadline, no entry
    gone.ended = True
    busy.idle_deadline = 25.0  # read from since
    timer.expire(9.9)
    assert quiet.expired_at is None and len(timer) == 2  # the ended one is dropped
    timer.expire(10.0)
    assert quiet.expired_at is not None and busy.expired_at is None
    assert len(timer) == 1  # busy, pushed back to 25
    timer.expire(25.0)
    assert busy.expired_at is not None and len(timer) == 0


async def test_the_timer_task_wakes_for_a_deadline_sooner_than_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = IdleTimer()
    late, soon = Idler(1, 100.0), Idler(2, 0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        timer.watch(late)
        await trio.testing.wait_all_tasks_blocked()
        soon.idle_deadline = trio.current_time() + 0.3
        timer.watch(soon)
        with trio.fail_after(1):
            await soon.expired.wait()
        assert late.expired_at is None
        with trio.fail_after(200):
            await late.expired.wait()
        nursery.cancel_scope.cancel()
    assert soon.expired_at is not None and late.expired_at is not None
    assert abs(soon.expired_at - 0.3) < 0.02  # at its deadline, not at the next round
    assert abs(late.expired_at - 100.0) < 0.02


async def _nothing(*_: object) -> None:
    return None


async def _connection_run(
    connection: StreamConnection,
    tasks: trio.Nursery,
    timer: IdleTimer,
    idle: float,
    done: trio.Event,
) -> None:
    await connection.run(
        ParseLimits(), idle, 30.0, _nothing, _nothing, tasks=tasks, idle_timer=timer
    )
    done.set()


async def test_an_idle_connection_is_closed_with_the_reason_and_a_busy_one_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timer = IdleTimer()
    ours, theirs = trio.socket.socketpair()
    peer = trio.SocketStream(theirs)
    connection = StreamConnection(PlainStream(trio.SocketStream(ours)), FLOW, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        done = trio.Event()
        nursery.start_soon(_connection_run, connection, nursery, timer, 5.0, done)
        for _ in range(4):  # keep-alives every 3 s: never 5 s idle
            await trio.sleep(3)
            await peer.send_all(b"\r\n\r\n")
        assert not connection.ended
        with trio.fail_after(60):
            await done.wait()
        closed_at = trio.current_time()
        assert connection.ended
        nursery.cancel_scope.cancel()
    assert connection.close_reason == "idle for 5 s (limits.idle_timeout)"
    assert 17.0 <= closed_at <= 17.5  # 5 s after the last keep-alive, at 12 s


async def test_close_from_another_task_wakes_a_reader_waiting_on_its_socket() -> None:
    ours, _theirs = trio.socket.socketpair()
    connection = StreamConnection(PlainStream(trio.SocketStream(ours)), FLOW, None)
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def run_then_report() -> None:
            await connection.run(ParseLimits(), 300.0, 30.0, _nothing, _nothing, tasks=nursery)
            done.set()

        nursery.start_soon(run_then_report)
        await trio.testing.wait_all_tasks_blocked()
        connection.close("peer removed from the configuration")
        connection.close("a later reason")  # the first one given is the one logged
        with trio.fail_after(5):
            await done.wait()
    assert connection.close_reason == "peer removed from the configuration"
    assert connection.ended


def test_an_ended_connection_is_not_kept_alive_by_the_timer_and_its_entry_is_swept() -> None:
    """With a connection per call, thousands end long before their idle deadline: the heap
    must neither keep their TLS state alive nor grow with them."""
    timer = IdleTimer()
    live = [Idler(n, 300.0, clock=lambda: 0.0) for n in range(100)]
    for idler in live:
        timer.watch(idler)
    for n in range(100, 1100):  # a thousand short-lived connections
        gone = Idler(n, 300.0, clock=lambda: 0.0)
        timer.watch(gone)
        probe = weakref.ref(gone)
        gone.ended = True
        timer.forget()
        del gone
        assert probe() is None  # nothing of the timer's holds it
    assert len(timer) < 100 + 2 * 64 + 100  # swept as it went, not 1,100 entries
    timer.expire(301.0)
    assert all(idler.expired_at is not None for idler in live)
    assert len(timer) == 0
