"""The shared wake-up heap: moved deadlines and ended things are skipped, each due thing
comes out once, and stale entries never outnumber the live things for long."""

from __future__ import annotations

from dataclasses import dataclass

from sipserver.proxy.wakeups import WakeUps


@dataclass(eq=False)
class Thing:
    deadline: float | None
    scheduled: float | None = None
    ended: bool = False


def test_moved_and_ended_things_are_skipped_and_each_due_one_comes_out_once() -> None:
    things = [Thing(5.0), Thing(3.0), Thing(4.0)]
    heap: WakeUps[Thing] = WakeUps(lambda t: not t.ended, lambda: len(things))
    for thing in things:
        heap.schedule(thing)
        heap.schedule(thing)  # unchanged: not queued twice
    assert len(heap) == 3
    things[0].deadline = 1.0  # moved earlier
    heap.schedule(things[0])
    things[1].ended = True
    assert heap.next_deadline() == 1.0
    assert list(heap.due(4.5)) == [things[0], things[2]]
    assert heap.next_deadline() is None  # the old 5.0 entry of the moved thing is stale


def test_stale_entries_are_dropped_once_they_outnumber_the_live_things() -> None:
    live: list[Thing] = []
    heap: WakeUps[Thing] = WakeUps(lambda t: not t.ended, lambda: len(live))
    for n in range(2000):
        thing = Thing(1000.0 + n)
        heap.schedule(thing)
        thing.ended = True  # ends at once, as most transactions on TCP do
    assert len(heap) <= 2 * len(live) + 256 + 1
