"""Idle timeouts for every TCP/TLS connection from one task. A cancel scope per connection
would cost each idle connection 0.9 KiB (trio's scope and its status); here it costs a
heap entry. Deadlines move on with every read; the heap is not updated then, only when
an entry comes due: a connection read from since is pushed back at its new deadline."""

from __future__ import annotations

import heapq
import math
from typing import Protocol

import trio

MAX_SLEEP = 1.0  # seconds: the timer looks again at least this often


class Expiring(Protocol):
    connection_id: int
    idle_deadline: float  # trio time; math.inf = never

    @property
    def ended(self) -> bool: ...

    def idle_expired(self) -> None: ...


class IdleTimer:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expiring]] = []
        self._due = math.inf  # when the timer wakes next
        self._sooner: trio.Event | None = None  # set when a watch falls before _due

    def __len__(self) -> int:
        return len(self._heap)

    def watch(self, connection: Expiring) -> None:
        deadline = connection.idle_deadline
        if deadline == math.inf:
            return
        heapq.heappush(self._heap, (deadline, connection.connection_id, connection))
        if deadline < self._due and self._sooner is not None:
            self._sooner.set()

    def expire(self, now: float) -> None:
        """Tell every connection idle past its deadline; push the others back."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, connection = heapq.heappop(heap)
            if connection.ended:
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
