"""Writing without a task switch. When a connection has nothing queued, the bytes of a new
message go straight to the kernel from the task that produced them (a non-blocking send);
only what the kernel does not take waits for the connection's writer task. Under light
load this saves a wake-up of the writer for every message sent."""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import termios
from typing import Protocol

import trio


class DirectStream(Protocol):
    """A stream that can take bytes without waiting (PlainStream, TLSStream)."""

    def send_nowait(self, data: bytes) -> bool: ...

    def unread(self) -> int: ...

    def interrupt(self) -> None: ...

    @property
    def has_unsent(self) -> bool: ...


class BacklogWatch(Protocol):
    """Who wants to hear of unread backlogs (the overload guard), and whether it does now:
    the FIONREAD per read is only paid while the loop is busy enough to matter."""

    active: bool

    def note_backlog(self, unread: int) -> None: ...


def raw_socket(stream: trio.SocketStream | trio.socket.SocketType) -> socket.socket | None:
    """The non-blocking stdlib socket under a trio stream or socket (None if trio hides it)."""
    trio_socket = stream.socket if isinstance(stream, trio.SocketStream) else stream
    sock = getattr(trio_socket, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def unread_bytes(sock: socket.socket | None) -> int:
    """Bytes the kernel holds for us that we have not read yet (FIONREAD): a backlog."""
    if sock is None:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count, True)
    except OSError:
        return 0
    return count[0]


# Linux's SO_MEMINFO: the socket's memory accounting, of which the receive queue's bytes
# (SK_MEMINFO_RMEM_ALLOC, index 0) and the datagrams dropped because it was full
# (SK_MEMINFO_DROPS, index 8).
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO = struct.Struct("9I")


def datagram_queue(sock: socket.socket | None) -> tuple[int, int]:
    """(bytes queued, datagrams dropped so far) of a UDP socket. FIONREAD would give only
    the next datagram's size however many wait behind it; the queue's memory (kernel
    accounting, a few hundred bytes more per datagram than its payload) tells a backlog
    apart from one datagram."""
    if sock is None:
        return 0, 0
    try:
        info = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
    except (OSError, struct.error):
        return unread_bytes(sock), 0
    return info[0], info[8]


def interrupt(sock: socket.socket | None) -> None:
    """Wake whoever waits to read or write on the socket, with ClosedResourceError: how a
    connection is ended from another task without a cancel scope per connection."""
    if sock is not None and sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)


def send_some(sock: socket.socket | None, data: bytes) -> int:
    """Bytes the kernel took at once; 0 when it has no room or the socket failed (the
    writer task then meets the failure with the remainder)."""
    if sock is None:
        return 0
    try:
        return sock.send(data)
    except OSError:  # BlockingIOError, InterruptedError, or a broken connection
        return 0


def send_datagram_now(sock: trio.socket.SocketType, data: bytes, address: tuple[str, int]) -> bool:
    """Send a datagram without a trip to the scheduler (trio's sendto yields after every
    send, a pass of its loop per datagram); False when the socket buffer is full and the
    caller must wait with trio's sendto. Other errors are raised, as trio's are."""
    raw = raw_socket(sock)
    if raw is None:
        return False
    try:
        raw.sendto(data, address)
    except BlockingIOError:
        return False
    return True


async def receive_some(sock: socket.socket, max_bytes: int) -> bytes:
    """What trio's SocketStream.receive_some does, with three frames fewer: each one is
    held by every idle connection while it waits (about 1.5 KiB in all), and walked on
    every read. Like trio's, it is a checkpoint and says BrokenResourceError when the
    connection breaks. As in trio, a read that had to wait has yielded already: only one
    that found bytes at once yields again, so a message that arrives costs one pass of
    the scheduler, not two."""
    await trio.lowlevel.checkpoint_if_cancelled()
    if (data := _recv_now(sock, max_bytes)) is not None:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    while True:
        await trio.lowlevel.wait_readable(sock)
        if (data := _recv_now(sock, max_bytes)) is not None:
            return data


def _recv_now(sock: socket.socket, max_bytes: int) -> bytes | None:
    """What the kernel holds, or None if nothing yet. Not inlined in receive_some: an
    exception passing through a coroutine gives it a frame object for as long as it
    lives (0.2 KiB on every idle connection); this function's goes when it returns."""
    try:
        return sock.recv(max_bytes)
    except BlockingIOError:
        return None
    except OSError as exc:
        if sock.fileno() == -1:
            raise trio.ClosedResourceError("the connection was closed") from None
        raise trio.BrokenResourceError(f"socket error: {exc}") from exc


class PlainStream(trio.abc.Stream):
    """A TCP SocketStream that can also be written without waiting (`send_nowait`)."""

    __slots__ = ("_raw", "_unsent", "transport")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.transport = stream
        self._raw = raw_socket(stream)
        self._unsent = b""  # taken by send_nowait, not yet in the kernel: goes out first

    def send_nowait(self, data: bytes) -> bool:
        """Take `data` if nothing is waiting to go out; True when it was taken (any rest
        waits in the stream and needs a `send_all`, with any data, to go out)."""
        if self._unsent or self._raw is None:
            return False
        sent = send_some(self._raw, data)
        self._unsent = data[sent:]
        return True

    @property
    def has_unsent(self) -> bool:
        return bool(self._unsent)

    def unread(self) -> int:
        return unread_bytes(self._raw)

    def interrupt(self) -> None:
        interrupt(self._raw)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._unsent:
            unsent, self._unsent = self._unsent, b""
            await self.transport.send_all(unsent)
        if data:
            await self.transport.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._raw is None:
            return await self.transport.receive_some(max_bytes)
        return await receive_some(self._raw, max_bytes or 65536)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()
