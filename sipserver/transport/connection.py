"""One TCP or TLS connection: a reader that frames messages, and bytes sent straight to the
kernel; only what the kernel does not take at once waits in a queue bounded in bytes, for a
writer task started when there is such a queue. A peer that stops reading only ever stalls
itself, and an idle connection holds one task and nothing else of trio's: its idle
deadline is kept by the server's IdleTimer, its writer and keep-alive tasks run in the
server's nursery under scopes the connection cancels and waits out when it ends, and
close() wakes a reader waiting on the socket (trio's notify_closing) rather than
cancelling it.

A read that brings several messages is handled as a batch: what they produce for any
connection is held back until the batch is done (or BATCH_MESSAGES of it are) and then
goes out in one write (one system call; on TLS, records of up to 16 KiB), in the order it
was produced. Under load one read carries many messages, and a write per message cost
more than the message itself."""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import structlog
import trio

from sipserver.config.schema import PeerSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.framing import PING, FramingError, KeepAlivePing, StreamFramer
from sipserver.sip.message import ParseLimits
from sipserver.transport.direct import BacklogWatch, DirectStream
from sipserver.transport.idle import IdleTimer

log = structlog.get_logger("sipserver")
_connection_ids = itertools.count(1)
DEFAULT_SEND_QUEUE_BYTES = 1 << 20
FINISH_LINGER = 1.0  # seconds a closing stream keeps reading so its last answer is delivered


class _Batch:
    """The connections holding bytes back for the batch a reader task is handling."""

    __slots__ = ("held", "owner")

    def __init__(self) -> None:
        self.owner = trio.lowlevel.current_task()
        self.held: list[StreamConnection] = []

    def release(self) -> None:
        held, self.held = self.held, []
        for connection in held:
            connection.release()


# The batch under way in this task. A task started during a batch inherits the variable
# (trio copies the context), so the owner is checked too: only the reader holds bytes back.
_batch: ContextVar[_Batch | None] = ContextVar("sipserver_batch", default=None)
BATCH_WRITE_BYTES = 1 << 16  # held back for one connection beyond this: written at once
# Messages of a batch whose output is written together: the first answer of a long batch
# waits for at most this many messages to be handled.
BATCH_MESSAGES = 8


def next_connection_id() -> int:
    return next(_connection_ids)


class StreamConnection:
    # Thousands of these live at once (one per idle peer): no per-instance dict.
    __slots__ = (
        "__weakref__",  # the IdleTimer holds connections weakly
        "_backlog",
        "_closed",
        "_direct",
        "_ended",
        "_held",
        "_idle_key",
        "_idle_timeout",
        "_keepalive_scope",
        "_pending",
        "_room",
        "_send_timeout",
        "_tasks",
        "_woken",
        "_writer_gone",
        "_writer_scope",
        "_writing",
        "close_reason",
        "connection_id",
        "flow",
        "idle_deadline",
        "messages_in",
        "peer",
        "peer_cert",
        "queue_limit",
        "queued_bytes",
        "stream",
        "verified",
    )

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
        # (bytes, close after them) waiting for the writer. Bounded in queued bytes
        # (limits.send_queue_bytes), which is what a slow reader actually costs us.
        self._pending: list[tuple[bytes, bool]] = []  # a list: the writer takes it whole
        self.queue_limit = queue_limit
        self.queued_bytes = 0
        self._room: trio.Event | None = None  # made when a sender waits for room
        # The nursery our writer runs in while the connection runs (the server's): a writer
        # task exists only while bytes wait (an idle connection would otherwise hold a
        # task, a channel and their frames: about 4 KiB each), and a nursery of our own
        # would cost 1.4 KiB more per connection than a cancel scope.
        self._tasks: trio.Nursery | None = None
        self._writer_scope: trio.CancelScope | None = None
        self._writer_gone: trio.Event | None = None  # made when run() waits for the writer
        self._keepalive_scope: trio.CancelScope | None = None
        self._ended = False
        self._closed = False  # close() was called: whatever ends the connection, not idleness
        self._send_timeout = 0.0
        self.messages_in = 0
        self.close_reason = "closed by peer"
        self.idle_deadline = math.inf  # trio time; pushed on by every read
        self._idle_timeout = 0.0
        self._idle_key = "limits.idle_timeout"  # the setting that timeout came from
        self._woken: trio.Event | None = None  # made while the reader waits for close()
        self._backlog: BacklogWatch | None = None
        self._writing = False  # a writer task exists: new bytes must queue behind its write
        self._held: bytearray | None = None  # held back for the end of a batch (see above)
        self._direct: DirectStream | None = stream if hasattr(stream, "send_nowait") else None  # type: ignore[assignment]

    def _put(self, transmit: Transmit) -> None:
        if self._ended:
            return
        data = transmit.data
        if data and not transmit.close_after:
            if self._held is not None:  # bytes of a batch wait: these go behind them
                self._held += data
                if len(self._held) > BATCH_WRITE_BYTES:
                    self.release()
                return
            batch = _batch.get()
            if batch is not None and batch.owner is trio.lowlevel.current_task():
                self._held = bytearray(data)
                batch.held.append(self)
                return
        else:
            self.release()  # what was held goes first
        self._write(data, transmit.close_after)

    def release(self) -> None:
        """Write what a batch held back for this connection (unless it has ended since)."""
        held, self._held = self._held, None
        if held and not self._ended:
            self._write(bytes(held), False)

    def _write(self, data: bytes, close_after: bool) -> None:
        if (
            not self._pending
            and not self._writing
            and data
            and not close_after
            and self._direct is not None
            and self._direct.send_nowait(data)
        ):
            if self._direct.has_unsent:  # the kernel took only part: the writer sends the rest
                self._start_writer()
            return
        self._pending.append((data, close_after))
        self.queued_bytes += len(data)
        self._start_writer()

    def _start_writer(self) -> None:
        if not self._writing and self._tasks is not None:
            self._writing = True
            self._tasks.start_soon(self._writer)

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
            if self._room is None:
                self._room = trio.Event()
            room = self._room
            with trio.move_on_after(timeout) as scope:
                await room.wait()
            if scope.cancelled_caught:
                self.close(f"send queue stayed full for {timeout:g} s (limits.send_timeout)")
                return
        self._put(transmit)

    @property
    def ended(self) -> bool:
        return self._ended

    def close(self, reason: str) -> None:
        """End the connection: the first reason given is the one logged."""
        if self._closed:
            return
        self.close_reason = reason
        self._closed = True
        if self._woken is not None:
            self._woken.set()
        if self._direct is not None:
            self._direct.interrupt()  # wakes a reader or writer waiting on the socket

    def idle_expired(self) -> None:
        self.close(f"idle for {self._idle_timeout:g} s ({self._idle_key})")

    async def run(
        self,
        limits: ParseLimits,
        idle_timeout: float,
        send_timeout: float,
        on_message: Callable[[StreamConnection, bytes], Awaitable[None]],
        on_framing_lost: Callable[[StreamConnection, FramingError], Awaitable[None]],
        *,
        tasks: trio.Nursery,
        idle_timer: IdleTimer | None = None,
        keepalive_interval: float = 0.0,
        backlog: BacklogWatch | None = None,
        idle_key: str = "limits.idle_timeout",
    ) -> None:
        """Read until the peer closes, the connection idles out (with an `idle_timer`) or
        close() is called. The writer and keep-alive tasks go into `tasks` (a nursery that
        outlives us) and are gone when this returns. `idle_key`: the setting the idle
        timeout came from, named when it closes the connection."""
        self._backlog = backlog
        self._send_timeout = send_timeout
        self._idle_timeout = idle_timeout
        self._idle_key = idle_key
        self._tasks = tasks
        self.idle_deadline = trio.current_time() + idle_timeout
        if idle_timer is not None:
            idle_timer.watch(self)
        try:
            if self._pending:  # queued before the connection ran
                self._start_writer()
            if keepalive_interval > 0:
                tasks.start_soon(self._keepalive, keepalive_interval)
            await self._reader(limits, idle_timeout, send_timeout, on_message, on_framing_lost)
        finally:
            self._ended, self._tasks = True, None
            self._pending.clear()
            if idle_timer is not None:
                idle_timer.forget()
            if self._keepalive_scope is not None:
                self._keepalive_scope.cancel()
            await self._writer_ended()

    async def _writer_ended(self) -> None:
        """Cancel the writer, if there is one, and wait until it has let go of the stream."""
        if not self._writing:
            return
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        self._writer_gone = trio.Event()
        with trio.CancelScope(shield=True):  # cancelled, it ends at its next checkpoint
            await self._writer_gone.wait()

    async def _reader(
        self,
        limits: ParseLimits,
        idle_timeout: float,
        send_timeout: float,
        on_message: Callable[[StreamConnection, bytes], Awaitable[None]],
        on_framing_lost: Callable[[StreamConnection, FramingError], Awaitable[None]],
    ) -> None:
        framer = StreamFramer(limits)
        while not self._closed:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._closed:  # else close() woke us, with its own reason
                    self.close_reason = f"connection broken: {exc}"
                return
            if not data:
                return
            if self._backlog is not None and self._backlog.active and self._direct:
                # Bytes still waiting after this read: the peer sends faster than we
                # handle (what the overload guard listens for; 0 says it is gone).
                self._backlog.note_backlog(self._direct.unread())
            try:
                items = framer.feed(data)
            except FramingError as exc:
                self.idle_deadline = math.inf
                self.close_reason = f"framing lost: {exc.reason}"
                await on_framing_lost(self, exc)
                # The writer sends the last answer, then closes.
                self._woken = trio.Event()
                if not self._closed:
                    await self._woken.wait()
                return
            if len(items) > 1:
                batch = _Batch()
                token = _batch.set(batch)
                try:
                    await self._handle(items, send_timeout, on_message, batch)
                finally:
                    _batch.reset(token)
                    batch.release()
            else:
                await self._handle(items, send_timeout, on_message, None)
            if self._closed:  # by what a message led to: read no further
                return
            self.idle_deadline = trio.current_time() + idle_timeout

    async def _handle(
        self,
        items: list[bytes | KeepAlivePing],
        send_timeout: float,
        on_message: Callable[[StreamConnection, bytes], Awaitable[None]],
        batch: _Batch | None,
    ) -> None:
        for count, item in enumerate(items, 1):
            if batch is not None and count % BATCH_MESSAGES == 0:
                batch.release()
            if item is PING:
                # RFC 5626 §3.5.1 pong
                await self.send(Transmit(self.flow, b"\r\n"), send_timeout)
                continue
            assert isinstance(item, bytes)
            self.messages_in += 1
            await on_message(self, item)
            if self._closed:
                return

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
        if self._ended:
            return
        with trio.CancelScope() as self._keepalive_scope:
            while True:
                await trio.sleep(interval)
                self.queue(Transmit(self.flow, b"\r\n\r\n"))

    async def _writer(self) -> None:
        """Send what is queued, everything that is waiting in one write (under load one
        system call and one TLS record flush carry many messages), until nothing waits."""
        try:
            if self._ended:  # started after the connection ended: nothing to write to
                return
            with trio.CancelScope() as self._writer_scope:
                await self._write_pending()
        except Exception:  # it runs in the server's nursery: a bug here must not stop it
            log.exception("internal_error")
            self.close("internal error while sending")
        finally:
            self._writing, self._writer_scope = False, None
            if self._writer_gone is not None:
                self._writer_gone.set()

    async def _write_pending(self) -> None:
        send_timeout = self._send_timeout
        while self._pending or (self._direct is not None and self._direct.has_unsent):
            batch, self._pending = self._pending, []
            closing = next((i for i, (_, close) in enumerate(batch) if close), None)
            if closing is not None:
                del batch[closing + 1 :]  # nothing goes after a message that closes
            close_after = closing is not None
            data = b"".join(item[0] for item in batch)
            self.queued_bytes -= len(data)
            if self._room is not None and self.queued_bytes <= self.queue_limit // 2:
                self._room.set()
                self._room = None
            if data or (self._direct is not None and self._direct.has_unsent):
                try:
                    with trio.fail_after(send_timeout):
                        await self.stream.send_all(data)
                except trio.TooSlowError:
                    self.close(f"send blocked for {send_timeout:g} s (limits.send_timeout)")
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.close(f"connection broken while sending: {exc}")
                    return
            if close_after:
                await self._finish()
                self.close(self.close_reason)
                return
