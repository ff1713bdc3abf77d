"""One TCP or TLS connection: a reader that frames messages and a writer that drains a
queue bounded in bytes, so a peer that stops reading only ever stalls itself."""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable

import structlog
import trio

from sipserver.pki.certinfo import CertInfo
from sipserver.settings import PeerSettings
from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.framing import PING, FramingError, StreamFramer
from sipserver.sip.message import ParseLimits
from sipserver.transport.direct import BacklogWatch, DirectStream

log = structlog.get_logger("sipserver")
_connection_ids = itertools.count(1)
DEFAULT_SEND_QUEUE_BYTES = 1 << 20
FINISH_LINGER = 1.0  # seconds a closing stream keeps reading so its last answer is delivered


def next_connection_id() -> int:
    return next(_connection_ids)


class StreamConnection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        flow: Flow,
        peer: PeerSettings | None,
        queue_limit: int = DEFAULT_SEND_QUEUE_BYTES,
        *,
        verified: bool = False,
        peer_cert: CertInfo | None = None,
    ) -> None:
        assert flow.connection_id is not None
        self.stream = stream
        self.flow = flow
        self.connection_id = flow.connection_id
        # The peer this connection belongs to: proven by its certificate (`verified`, TLS),
        # or by the source address (plain TCP), or the target we opened it to.
        self.peer = peer
        self.verified = verified
        self.peer_cert = peer_cert
        # The channel itself is unbounded; the bound is on queued bytes (limits.send_queue_bytes),
        # which is what a slow reader actually costs us.
        self._send, self._queue = trio.open_memory_channel[tuple[bytes, bool]](float("inf"))
        self.queue_limit = queue_limit
        self.queued_bytes = 0
        self._room = trio.Event()
        self._room.set()
        self.messages_in = 0
        self.close_reason = "closed by peer"
        self._cancel: trio.CancelScope | None = None
        self._backlog: BacklogWatch | None = None
        self._writer_busy = False  # a write is under way: new bytes must queue behind it
        self._direct: DirectStream | None = stream if hasattr(stream, "send_nowait") else None  # type: ignore[assignment]

    def _put(self, transmit: Transmit) -> None:
        if (
            self.queued_bytes == 0
            and not self._writer_busy
            and transmit.data
            and not transmit.close_after
            and self._direct is not None
            and self._direct.send_nowait(transmit.data)
        ):
            if self._direct.has_unsent:  # the kernel took only part: the writer sends the rest
                self._send.send_nowait((b"", False))
            return
        try:
            self._send.send_nowait((transmit.data, transmit.close_after))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self.queued_bytes += len(transmit.data)
        if self.queued_bytes > self.queue_limit:
            self._room = trio.Event()

    def queue(self, transmit: Transmit) -> None:
        """Queue from another task, which must never wait for this peer: past the byte
        limit the connection is closed instead."""
        if self.queued_bytes + len(transmit.data) > self.queue_limit:
            self.close(
                f"send queue over {self.queue_limit} bytes (limits.send_queue_bytes): "
                "the peer reads too slowly"
            )
            return
        self._put(transmit)

    async def send(self, transmit: Transmit, timeout: float) -> None:
        """Queue an answer produced by this connection's own reader: waiting for room
        slows only this peer, which is what a peer that reads slowly deserves."""
        if self.queued_bytes > self.queue_limit:
            with trio.move_on_after(timeout) as scope:
                await self._room.wait()
            if scope.cancelled_caught:
                self.close(f"send queue stayed full for {timeout:g} s (limits.send_timeout)")
                return
        self._put(transmit)

    def close(self, reason: str) -> None:
        self.close_reason = reason
        if self._cancel is not None:
            self._cancel.cancel()

    async def run(
        self,
        limits: ParseLimits,
        idle_timeout: float,
        send_timeout: float,
        on_message: Callable[[StreamConnection, bytes], Awaitable[None]],
        on_framing_lost: Callable[[StreamConnection, FramingError], Awaitable[None]],
        keepalive_interval: float = 0.0,
        backlog: BacklogWatch | None = None,
    ) -> None:
        self._backlog = backlog
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            nursery.start_soon(self._writer, send_timeout)
            if keepalive_interval > 0:
                nursery.start_soon(self._keepalive, keepalive_interval)
            await self._reader(limits, idle_timeout, send_timeout, on_message, on_framing_lost)
            nursery.cancel_scope.cancel()

    async def _reader(
        self,
        limits: ParseLimits,
        idle_timeout: float,
        send_timeout: float,
        on_message: Callable[[StreamConnection, bytes], Awaitable[None]],
        on_framing_lost: Callable[[StreamConnection, FramingError], Awaitable[None]],
    ) -> None:
        framer = StreamFramer(limits)
        # One cancel scope for the whole connection, its deadline pushed on after each read:
        # an idle peer is timed out without a new scope per read.
        with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as idle:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.close_reason = f"connection broken: {exc}"
                    return
                if not data:
                    return
                if self._backlog is not None and self._backlog.active and self._direct:
                    # Bytes still waiting after this read: the peer sends faster than we
                    # handle (what the overload guard listens for).
                    waiting = self._direct.unread()
                    if waiting:
                        self._backlog.note_backlog(waiting)
                try:
                    items = framer.feed(data)
                except FramingError as exc:
                    idle.deadline = math.inf
                    self.close_reason = f"framing lost: {exc.reason}"
                    await on_framing_lost(self, exc)
                    await trio.sleep_forever()  # the writer sends the last answer, then closes
                for item in items:
                    if item is PING:
                        # RFC 5626 §3.5.1 pong
                        await self.send(Transmit(self.flow, b"\r\n"), send_timeout)
                        continue
                    assert isinstance(item, bytes)
                    self.messages_in += 1
                    await on_message(self, item)
                idle.deadline = trio.current_time() + idle_timeout
        if idle.cancelled_caught:
            self.close_reason = f"idle for {idle_timeout:g} s (limits.idle_timeout)"

    async def _finish(self) -> None:
        """After the last answer on a stream whose framing is lost: say we are done (FIN, or
        TLS close_notify) and read what the peer still sends for a moment. Closing with
        unread bytes would make the kernel send a reset, which can destroy that answer."""
        with trio.move_on_after(FINISH_LINGER):
            try:
                send_eof = getattr(self.stream, "send_eof", None)
                if send_eof is not None:
                    await send_eof()
                while await self.stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    async def _keepalive(self, interval: float) -> None:
        """RFC 5626 §3.5.1 pings on connections we opened, so NATs and firewalls keep them."""
        while True:
            await trio.sleep(interval)
            self.queue(Transmit(self.flow, b"\r\n\r\n"))

    async def _writer(self, send_timeout: float) -> None:
        """Send what is queued, everything that is waiting in one write: under load one
        system call (and one TLS record flush) carries many messages."""
        while True:
            try:
                batch = [await self._queue.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            while not batch[-1][1]:  # nothing goes after a message that closes
                try:
                    batch.append(self._queue.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            data = b"".join(item[0] for item in batch)
            close_after = batch[-1][1]
            self.queued_bytes -= len(data)
            if self.queued_bytes <= self.queue_limit // 2:
                self._room.set()
            if data or (self._direct is not None and self._direct.has_unsent):
                self._writer_busy = True
                try:
                    with trio.fail_after(send_timeout):
                        await self.stream.send_all(data)
                except trio.TooSlowError:
                    self.close(f"send blocked for {send_timeout:g} s (limits.send_timeout)")
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.close(f"connection broken while sending: {exc}")
                    return
                finally:
                    self._writer_busy = False
            if close_after:
                await self._finish()
                self.close(self.close_reason)
                return
