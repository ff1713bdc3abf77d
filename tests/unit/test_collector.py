"""The collector as the server keeps it: young passes only, their survivors frozen, and a
sweep for the cycles that die frozen. Each check runs in a Python of its own, since the
collector's settings and frozen objects belong to the whole process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run(script: str) -> Any:
    """Run `script` (which prints one JSON value last) in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_what_survives_a_young_pass_is_frozen_and_still_freed_by_reference_counting() -> None:
    seen = run(
        """
        import gc, json
        from sipserver.server.collector import tune_for_serving
        tune_for_serving()
        start = gc.get_freeze_count()
        kept = [{"n": [n]} for n in range(5000)]
        gc.collect(0)
        frozen = gc.get_freeze_count()
        middle = gc.collect(1)  # nothing left for it to walk, nothing found
        del kept
        print(json.dumps([frozen - start, gc.get_freeze_count() - start, middle]))
        """
    )
    frozen, after_del, middle = seen
    assert frozen >= 10_000  # each dict and its list
    assert after_del < 100  # gone with their last reference, frozen or not
    assert middle == 0


def test_a_sweep_frees_the_cycles_that_died_frozen() -> None:
    seen = run(
        """
        import gc, json
        from sipserver.server.collector import sweep, tune_for_serving
        tune_for_serving()
        class Node:
            pass
        nodes = [Node() for _ in range(300)]
        for node in nodes:
            node.me = node  # a cycle: reference counting alone never frees it
        gc.collect(0)  # the cycles survive (still referenced) and are frozen
        del nodes, node
        passes = [gc.collect(0), gc.collect(1)]  # frozen: the passes do not see them
        swept = sweep()
        print(json.dumps([passes, swept.collected, swept.frozen_before, swept.frozen_after,
                          swept.seconds]))
        """
    )
    passes, collected, before, after, seconds = seen
    assert passes == [0, 0]
    assert collected >= 300
    assert after <= before - 300
    assert 0 <= seconds < 60


def test_the_server_sweeps_every_interval_and_says_how_it_went() -> None:
    seen = run(
        """
        import json, trio, trio.testing
        from sipserver.server.collector import sweep_every
        async def main():
            sweeps = []
            done = trio.Event()
            def swept(result):
                sweeps.append((trio.current_time(), result.collected, result.frozen_after))
                if len(sweeps) == 2:
                    done.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sweep_every, 600.0, swept)
                await done.wait()
                nursery.cancel_scope.cancel()
            return sweeps
        clock = trio.testing.MockClock(autojump_threshold=0)
        print(json.dumps(trio.run(main, clock=clock)))
        """
    )
    assert [when for when, _, _ in seen] == [600.0, 1200.0]
    assert all(collected >= 0 for _, collected, _ in seen)
    # What outlived each sweep (this interpreter's modules among it) is frozen again.
    assert all(frozen > 1000 for _, _, frozen in seen)


def test_a_sweep_due_while_the_loop_is_busy_waits_for_a_quiet_moment_or_one_interval() -> None:
    seen = run(
        """
        import json, trio, trio.testing
        from sipserver.server.collector import sweep_every
        async def main(quiet_from):
            sweeps = []
            done = trio.Event()
            def busy():
                return 0.9 if trio.current_time() < quiet_from else 0.1
            def swept(result):
                sweeps.append(trio.current_time())
                done.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sweep_every, 600.0, swept, busy)
                await done.wait()
                nursery.cancel_scope.cancel()
            return sweeps
        found = []
        for quiet_from in (650.5, 1e9):  # quiet 50 s after it fell due; never quiet
            clock = trio.testing.MockClock(autojump_threshold=0)
            found.append(trio.run(main, quiet_from, clock=clock))
        print(json.dumps(found))
        """
    )
    after_the_busy_spell, never_quiet = seen
    assert after_the_busy_spell == [651.0]  # the first check of the loop once it was quiet
    assert never_quiet == [1200.0]  # at the latest one interval late
