"""The garbage collector's settings for a serving process."""

from __future__ import annotations

import gc
from typing import Final

FULL_GC_AFTER: Final = 100  # middle-generation passes per full one
# Young objects (net of those already freed) per young pass; CPython's default is 700. A
# proxied call leaves its transactions alive for 32 s, so the young passes came about
# every call and found them alive: at 800 calls/s the collector took 26-40 µs per call at
# 700 and 17-19 µs at 20,000 (middle passes 58 -> 10 in 10 s, the longest 3.9 ms).
YOUNG_GC_AFTER: Final = 20_000


def tune_for_serving() -> None:
    """Called once start-up is done, before the first message."""
    # Everything made so far (modules, configuration, certificates) lives as long as the
    # server: keep it out of the collector's full passes, whose pauses grow with the heap
    # and show as a tail of slow calls.
    gc.freeze()
    # While the heap grows (a burst of calls, each holding its transactions for 32 s), a
    # full pass came every ~3 s and paused the loop 30-80 ms to find nothing: cycles are
    # rare here, reference counting frees the rest. A full pass after ten times as many
    # younger ones (the default is 10) keeps them rare.
    _young, middle, _full = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_AFTER, middle, FULL_GC_AFTER)
