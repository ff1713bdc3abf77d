"""Idle timeouts for every TCP/TLS connection from one task. A cancel scope per connection
would cost each idle connection 0.9 KiB (trio's scope and its status); here it costs a
heap entry. Deadlines move on with every read; the heap is not updated then, only when
an entry comes due: a connection read from since is pushed back at its new deadline.

The heap holds connections weakly: one that has ended must not keep its TLS state alive
until its old deadline (with a connection per call, minutes of them). Ended connections
say so (`forget`), and their entries are swept out once they are half of the heap."""

from __future__ import annotations

import heapq
import math
import weakref
from typing import Protocol

import trio

MAX_SLEEP = 1.0  # seconds: the timer looks again at least this often
_SWEEP_FLOOR = 64  # ended entries tolerated before a sweep, whatever the heap's size


class Expiring(Protocol):
    connection_id: int
    idle_deadline: float  # trio time; math.inf = never

    @property
    def ended(self) -> bool: ...

    def idle_expired(self) -> None: ...


class IdleTimer:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Expiring]]] = []
        self._ended = 0  # entries in the heap whose connection has ended
        self._due = math.inf  # when the timer wakes next
        self._sooner: trio.Event | None = None  # set when a watch falls before _due

    def __len__(self) -> int:
        return len(self._heap)

    def watch(self, connection: Expiring) -> None:
        deadline = connection.idle_deadline
        if deadline == math.inf:
            return
        if self._ended > len(self._heap) // 2 + _SWEEP_FLOOR:
            self._sweep()
        entry = (deadline, connection.connection_id, weakref.ref(connection))
        heapq.heappush(self._heap, entry)
        if deadline < self._due and self._sooner is not None:
            self._sooner.set()

    def forget(self) -> None:
        """A connection has ended (its entry goes at the next sweep, or when due)."""
        self._ended += 1

    def _sweep(self) -> None:
        self._heap = [entry for entry in self._heap if _alive(entry[2])]
        heapq.heapify(self._heap)
        self._ended = 0

    def expire(self, now: float) -> None:
        """Tell every connection idle past its deadline; push the others back."""
        while self._heap and self._heap[0][0] <= now:  # (watch() may sweep: no alias)
            connection = heapq.heappop(self._heap)[2]()
            if connection is None or connection.ended:
                self._ended = max(0, self._ended - 1)
                continue
            if connection.idle_deadline > now:
                self.watch(connection)  # read from since it was pushed
            else:
                connection.idle_expired()

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            self.expire(now)
            self._due = min(self._heap[0][0] if self._heap else math.inf, now + MAX_SLEEP)
            self._sooner = trio.Event()
            with trio.move_on_at(self._due):
                await self._sooner.wait()
            self._sooner = None


def _alive(ref: weakref.ref[Expiring]) -> bool:
    connection = ref()
    return connection is not None and not connection.ended
