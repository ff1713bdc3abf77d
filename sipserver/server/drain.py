"""Stopping well. SIGTERM/SIGINT drain: listeners close at once, new calls get 503 +
Retry-After, and what is in flight gets server.shutdown_grace seconds to finish; a second
signal stops at once. SIGHUP reloads. The drain waits on an event that the dispatcher
sets when the core has nothing left in flight: no polling."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import structlog
import trio

from sipserver.proxy.core import SipCore
from sipserver.transport.listeners import Listeners

log = structlog.get_logger("sipserver")


class Drain:
    def __init__(self, core: SipCore, listeners: Listeners) -> None:
        self.core = core
        self.listeners = listeners
        self._idle: trio.Event | None = None

    @property
    def started(self) -> bool:
        return self._idle is not None

    def core_changed(self) -> None:
        """Called after everything the core was handed: is it idle yet?"""
        if self._idle is not None and not self._idle.is_set() and not self.core.busy():
            self._idle.set()

    async def run(self, stop: trio.CancelScope, why: str, grace: float) -> None:
        """Stop taking new connections and new calls at once (503 + Retry-After), let the
        transactions in flight finish within `grace`, then stop."""
        log.info("server_draining", signal=why, grace_seconds=grace, busy=self.core.busy())
        self._idle = trio.Event()
        self.core.start_drain()
        self.core_changed()
        await self.listeners.stop_accepting()
        started = time.monotonic()
        with trio.move_on_after(grace):
            await self._idle.wait()
        left = self.core.busy()
        (log.info if not left else log.warning)(
            "server_drained" if not left else "server_grace_expired",
            seconds=round(time.monotonic() - started, 3),
            unfinished=left,
        )
        stop.cancel()


async def serve_signals(
    reload: Callable[[], object],
    drain: Drain,
    grace: Callable[[], float],
    stop: trio.CancelScope,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    reload()
                elif drain.started:
                    log.warning(
                        "server_stopping_now",
                        signal=name,
                        reason="second stop signal during the drain",
                    )
                    stop.cancel()
                    return
                else:
                    nursery.start_soon(drain.run, stop, name, grace())
