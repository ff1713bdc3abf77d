"""Graceful overload. A trio instrument measures how much of the time the event loop waits
for the network; when it is busy for more than limits.overload_busy of a window, the core
refuses new calls (out-of-dialog INVITEs) with 503 + Retry-After at once, while admitted
calls and in-dialog requests go on. A server that sheds keeps the calls it took; one that
does not drowns them all."""

from __future__ import annotations

import time

import structlog
import trio

from sipserver.proxy.core import SipCore
from sipserver.server.live_config import LiveConfig

log = structlog.get_logger("sipserver")
WINDOW = 0.1  # seconds per measurement
BUSY_WINDOWS = 2  # windows at or above the limit before overload starts: 200 ms
RATIO_UP = 0.1  # more of the new calls shed per window while still behind
RATIO_DOWN = 0.05  # fewer per window once the loop has room again
LEAVE_MARGIN = 0.08  # overload ends below limit - margin: hysteresis against flapping
# A read that leaves this many times limits.overload_backlog_bytes unread, after a busy
# window, starts overload at once: a queue that long is no noise, and every window waited
# for adds to the wait of the calls in it (and of their 503s).
DEEP_BACKLOG = 4


class LoopLoad(trio.abc.Instrument):
    """Time the run loop spends waiting for I/O: what is not waiting is work."""

    def __init__(self) -> None:
        self.waited = 0.0
        self._since = 0.0

    def before_io_wait(self, timeout: float) -> None:
        self._since = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        self.waited += time.perf_counter() - self._since


class OverloadGuard:
    """Overload = the loop busy for limits.overload_busy of BUSY_WINDOWS windows running
    while connections report backlogs (bytes waiting unread after a read): busy alone may be a
    server working hard and keeping up."""

    def __init__(self, core: SipCore, config: LiveConfig) -> None:
        self.core = core
        self._config = config
        self.load = LoopLoad()
        self.backlogs = 0  # reads that left a backlog, since start
        # Whether reads should measure their backlog: only once the loop is half as busy
        # as the limit (a system call per read is not free).
        self.active = False
        self.busy = 0.0  # share of the last window the loop was at work
        self._started_at = 0.0
        self._shed_at_start = 0
        self._peak = 0.0
        self._ratio = 0.0  # the share of new calls shed

    def note_backlog(self, unread: int) -> None:
        """Bytes left unread after a read (0 included: the backlog is gone)."""
        limits = self._config.current.limits
        behind = 0 < limits.overload_backlog_bytes < unread
        if behind:
            self.backlogs += 1
            deep = unread > DEEP_BACKLOG * limits.overload_backlog_bytes
            if deep and not self.core.overloaded and 0 < limits.overload_busy <= self.busy:
                self._enter(limits.overload_busy, unread)
        if self.core.overloaded:  # it only matters then (leaving overload clears it)
            self.core.set_backlogged(behind)

    async def run(self) -> None:
        """Each window: behind (busy and a backlog) sheds a larger share of new calls, calm
        a smaller one; the server settles where it keeps up, and overload ends at zero."""
        trio.lowlevel.add_instrument(self.load)
        try:
            busy_windows = 0
            while True:
                waited, started = self.load.waited, time.perf_counter()
                backlogs = self.backlogs
                await trio.sleep(WINDOW)
                elapsed = time.perf_counter() - started
                self.busy = max(0.0, 1.0 - (self.load.waited - waited) / elapsed)
                limits = self._config.current.limits
                limit = limits.overload_busy
                self.active = limit > 0 and (self.core.overloaded or self.busy >= limit / 2)
                backlog_seen = limits.overload_backlog_bytes == 0 or self.backlogs > backlogs
                if self.backlogs == backlogs:
                    self.core.set_backlogged(False)  # e.g. the connection behind went quiet
                behind = limit > 0 and self.busy >= limit and backlog_seen
                leave = limit - min(LEAVE_MARGIN, limit / 2)
                if not self.core.overloaded:
                    busy_windows = busy_windows + 1 if behind else 0
                    if busy_windows >= BUSY_WINDOWS:
                        self._enter(limit)
                        busy_windows = 0
                    continue
                busy_windows = 0  # overload may have started at a read (DEEP_BACKLOG)
                self._peak = max(self._peak, self.busy)
                if behind:
                    self._ratio = min(1.0, self._ratio + RATIO_UP)
                elif limit <= 0 or self.busy < leave:
                    self._ratio = max(0.0, self._ratio - RATIO_DOWN)
                if self._ratio <= 0.0:
                    self._leave()
                else:
                    self.core.set_overloaded(True, self._ratio)
        finally:
            trio.lowlevel.remove_instrument(self.load)

    def _enter(self, limit: float, backlog: int | None = None) -> None:
        """`backlog`: the unread bytes of the read that started it at once, if one did."""
        self._ratio = RATIO_UP * 2
        self.core.set_overloaded(True, self._ratio)
        self._started_at, self._shed_at_start, self._peak = (
            time.monotonic(),
            self.core.shed,
            self.busy,
        )
        log.warning(
            "server_overloaded",
            busy=round(self.busy, 3),
            limit=limit,
            **({"backlog_bytes": backlog} if backlog is not None else {}),
            action="a share of new calls get 503 with Retry-After until the load falls",
        )

    def _leave(self) -> None:
        self.core.set_overloaded(False)
        log.info(
            "server_overload_ended",
            seconds=round(time.monotonic() - self._started_at, 3),
            calls_shed=self.core.shed - self._shed_at_start,
            peak_busy=round(self._peak, 3),
            busy=round(self.busy, 3),
        )
