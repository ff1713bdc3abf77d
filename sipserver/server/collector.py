"""The garbage collector's settings for a serving process.

A proxied call leaves its transactions alive for 32 s (Timers J and K), so nearly every
object the collector looks at is alive, and each look costs a walk of memory gone cold.
The young passes stay, at CPython's threshold: they run often, over objects still in the
caches, and find the few cycles that die young. What survives one is frozen at once, so
the middle and full passes, which walked ever more live objects and paused the loop
long enough for the overload guard to shed calls, have nothing left to walk. Frozen
objects are still freed by reference counting when they go; only a cycle that becomes
garbage after being frozen waits for the next `sweep`, which the server runs every
SWEEP_SECONDS.

At 800 calls/s over UDP for 90 s (`call_rate.py --transports udp --rates 800 --seconds
90`, one run each): CPython's passes with the young threshold at 20,000 (the setting
before) took 3.6 s in all, the longest 316 ms, and the guard shed in 67 episodes (6,707
calls failed); young passes only, survivors frozen, at CPython's 700: 1.4 s, the longest
4 ms, 4 episodes (535 failed, no longer for the collector).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

# Between two sweeps. A sweep walks every live object: at 800 calls/s over UDP, 470,000-
# 580,000 of them, 445-531 ms, long enough for the overload guard to shed for a moment
# (so it waits for a quiet moment when it can: see sweep_every).
# It found no cycle there in 50 s; hourly, it bounds what rarer paths (errors, closed
# connections) might leave.
SWEEP_SECONDS: Final = 3600.0


def tune_for_serving() -> None:
    """Called once start-up is done, before the first message."""
    # Everything made so far (modules, configuration, certificates) lives as long as the
    # server: keep it out of the collector's passes.
    gc.freeze()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After each young pass, what it left alive joins the frozen objects. The middle
    passes had walked everything that survived ten young passes (at 800 calls/s, up to
    348 ms each); now they find nothing."""
    if phase == "stop" and info["generation"] == 0:
        gc.freeze()


@dataclass(frozen=True, slots=True)
class Sweep:
    collected: int  # unreachable objects found (cycles)
    frozen_before: int  # objects kept out of the collector's passes before the sweep
    frozen_after: int
    seconds: float  # how long the loop stood still


def sweep() -> Sweep:
    """One full pass over everything, frozen objects included: it collects the cycles
    that became garbage after they were frozen (rare here: reference counting frees the
    rest), then freezes what is left."""
    started = time.perf_counter()
    frozen_before = gc.get_freeze_count()  # a walk of its own: part of the pause
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    frozen_after = gc.get_freeze_count()
    return Sweep(collected, frozen_before, frozen_after, time.perf_counter() - started)


QUIET_BUSY: Final = 0.5  # the loop's busy share under which a sweep may run
QUIET_CHECK_SECONDS: Final = 1.0


async def sweep_every(
    seconds: float, swept: Callable[[Sweep], None], busy: Callable[[], float] = lambda: 0.0
) -> None:
    """Sweep every `seconds`, for ever, and tell `swept` how each went. A sweep that falls
    due while the loop is busy (`busy()`, its share of the last moment at work, at
    QUIET_BUSY or more) waits for a quieter moment, up to another `seconds`: its pause
    would otherwise let a backlog build at the worst time, and the overload guard shed."""
    while True:
        await trio.sleep(seconds)
        latest = trio.current_time() + seconds
        while busy() >= QUIET_BUSY and trio.current_time() < latest:
            await trio.sleep(QUIET_CHECK_SECONDS)
        swept(sweep())
