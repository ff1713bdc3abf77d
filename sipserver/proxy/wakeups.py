"""One heap of wake-up times for many things whose deadlines move (transactions, answered
calls). A thing is queued again only when its deadline changed; entries left behind by a
move or by the thing's end are skipped, and dropped in bulk once they outnumber the live
things, so an ended call is never held until its old deadline."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    scheduled: float | None  # the wake-up queued for it; WakeUps keeps it

    @property
    def deadline(self) -> float | None: ...


T = TypeVar("T", bound=Timed)


class WakeUps(Generic[T]):
    def __init__(self, alive: Callable[[T], bool], live_count: Callable[[], int]) -> None:
        self._alive = alive
        self._live_count = live_count
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, item: T) -> None:
        """Queue the item's deadline if it has one it was not queued for."""
        deadline = item.deadline
        if deadline is None or deadline == item.scheduled or not self._alive(item):
            return
        item.scheduled = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), item))
        if len(self._heap) > 2 * self._live_count() + 256:
            self._heap = [entry for entry in self._heap if self._current(entry)]
            heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> Iterator[T]:
        """The items whose deadline has passed, each once, earliest first. Schedule an item
        again after handling it."""
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if self._current(entry):
                entry[2].scheduled = None
                yield entry[2]

    def _current(self, entry: tuple[float, int, T]) -> bool:
        due, _, item = entry
        return item.scheduled == due and item.deadline == due and self._alive(item)
