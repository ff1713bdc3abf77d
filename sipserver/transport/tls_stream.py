"""A trio Stream that runs TLS with pyOpenSSL over memory BIOs.

trio's own SSLStream is built on the stdlib ssl module, which cannot record *why* a
client certificate failed verification together with the certificate itself, and cannot
give us the peer's chain on Python 3.11. pyOpenSSL can, so TLS runs here: the socket
stays a trio stream and OpenSSL only ever sees bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable

import trio
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from sipserver.transport.direct import (
    interrupt,
    raw_socket,
    receive_some,
    send_some,
    unread_bytes,
)

_CHUNK = 65536
_OUT_CHUNK = 1 << 18  # larger than anything one send leaves in the BIO


def _bio_bytes(bio: object) -> int:
    """Bytes held in a memory BIO (BIO_get_mem_data with no pointer just counts them)."""
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


def _bio_take(bio: object) -> bytes:
    """Everything a memory BIO holds, read out of it."""
    size = _bio_bytes(bio)
    if size <= 0:
        return b""
    buffer = _ffi.new("char[]", size)
    read = _lib.BIO_read(bio, buffer, size)
    return bytes(_ffi.buffer(buffer, max(0, read)))


def renew_memory_bios(connection: SSL.Connection) -> bytes:
    """Give the connection new, empty memory BIOs; returns the ciphertext that was waiting
    to be sent. A memory BIO never gives back the room it grew to, so after a handshake
    both keep the size of its largest flight (certificate chains included) for as long as
    the connection lives: about 3 KiB per idle connection. Bytes received but not read
    yet (a first message sent with the peer's Finished) move to the new one."""
    old_in = getattr(connection, "_into_ssl", None)
    old_out = getattr(connection, "_from_ssl", None)
    ssl = getattr(connection, "_ssl", None)
    if old_in is None or old_out is None or ssl is None:
        return b""  # not a memory-BIO connection (or pyOpenSSL changed): keep them
    new_in, new_out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
    if new_in == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_in, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return b""
    unread, unsent = _bio_take(old_in), _bio_take(old_out)
    _lib.SSL_set_bio(ssl, new_in, new_out)  # frees the old pair
    connection._into_ssl, connection._from_ssl = new_in, new_out
    if unread:
        connection.bio_write(unread)
    return unsent


class TLSStream(trio.abc.Stream):
    __slots__ = (
        "_flushed",
        "_flushing",
        "_raw",
        "_receiving",
        "_unsent",
        "connection",
        "transport",
    )

    def __init__(self, transport: trio.abc.Stream, connection: SSL.Connection) -> None:
        self.transport = transport
        self.connection = connection
        # One flush at a time drains OpenSSL's outgoing BIO and writes it to the socket, so
        # bytes from concurrent senders (and from the reader's post-handshake messages)
        # reach the wire in the order OpenSSL produced them. A flag, and an event only
        # while someone waits: a trio.Lock is 0.3 KiB more on every idle connection.
        self._flushing = False
        self._flushed: trio.Event | None = None
        self._receiving = False
        self._raw = raw_socket(transport) if isinstance(transport, trio.SocketStream) else None
        self._unsent = b""  # ciphertext taken by send_nowait, not yet in the kernel

    def send_nowait(self, data: bytes) -> bool:
        """Encrypt and write `data` at once if no write is under way; True when it was
        taken (any ciphertext the kernel did not take goes out first on the next flush)."""
        if self._unsent or self._raw is None or self._flushing:
            return False
        try:
            self._encrypt(data)
        except SSL.Error:
            return False  # the writer task meets the error and closes the connection
        wire = self._ciphertext()
        sent = send_some(self._raw, wire)
        self._unsent = wire[sent:]
        return True

    @property
    def has_unsent(self) -> bool:
        return bool(self._unsent)

    def unread(self) -> int:
        """Received bytes not yet read: in the kernel and in OpenSSL's input BIO."""
        bio = getattr(self.connection, "_into_ssl", None)
        return unread_bytes(self._raw) + (_bio_bytes(bio) if bio is not None else 0)

    def interrupt(self) -> None:
        interrupt(self._raw)

    def _encrypt(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            sent = self.connection.send(bytes(view[:16384]))
            view = view[sent:]

    def _readable(self) -> bool:
        """OpenSSL holds decrypted bytes, or received bytes it has not decrypted yet."""
        bio = getattr(self.connection, "_into_ssl", None)
        return bio is None or self.connection.pending() > 0 or _bio_bytes(bio) > 0

    def _pending_out(self) -> bool:
        """Bytes waiting in OpenSSL's outgoing BIO (asked without raising WantReadError)."""
        bio = getattr(self.connection, "_from_ssl", None)
        return bio is None or _bio_bytes(bio) > 0

    def _ciphertext(self) -> bytes:
        """Everything OpenSSL has written to its outgoing BIO."""
        out = b""
        while True:
            try:
                chunk = self.connection.bio_read(_OUT_CHUNK)
            except SSL.WantReadError:
                return out
            out += chunk
            if len(chunk) < _OUT_CHUNK:
                return out  # the BIO is empty: no need to ask (and catch WantReadError)

    async def _flush(self) -> None:
        while self._flushing:
            if self._flushed is None:
                self._flushed = trio.Event()
            await self._flushed.wait()
        # Uncontended (the usual case) no trip to the scheduler.
        self._flushing = True
        try:
            wire, self._unsent = self._unsent + self._ciphertext(), b""
            # What the kernel takes at once skips trio's send_all (its checks and
            # checkpoint cost more than the send itself on a handshake's small flights).
            wire = wire[send_some(self._raw, wire) :] if wire else wire
            if wire:
                await self.transport.send_all(wire)
        finally:
            self._flushing = False
            if self._flushed is not None:
                self._flushed.set()
                self._flushed = None

    async def _fill(self) -> bool:
        """Read the socket into OpenSSL; False at end of file."""
        return self._took(await self._read_socket())

    def _read_socket(self) -> Awaitable[bytes | bytearray]:
        # Returns the read's coroutine rather than awaiting it: the reader of an idle
        # connection waits in it with one frame (about 0.25 KiB) fewer.
        if self._raw is not None:
            return receive_some(self._raw, _CHUNK)
        return self.transport.receive_some(_CHUNK)

    def _took(self, data: bytes | bytearray) -> bool:
        if not data:
            self.connection.bio_shutdown()
            return False
        self.connection.bio_write(data)
        return True

    async def do_handshake(self) -> None:
        """Run the handshake to completion. Raises SSL.Error (after sending OpenSSL's
        alert to the peer) or trio.BrokenResourceError if the peer goes away."""
        while True:
            try:
                self.connection.do_handshake()
            except SSL.WantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError(
                        "peer closed the connection during the handshake"
                    ) from None
                continue
            except SSL.Error:
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
                    await self._flush()  # deliver the alert that says why
                raise
            self._unsent += renew_memory_bios(self.connection)
            await self._flush()
            return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            while True:
                # Ask OpenSSL only when it holds something: an empty read would cost an
                # exception (WantReadError) on every message.
                if self._readable():
                    try:
                        data = self.connection.recv(max_bytes or _CHUNK)
                        return self._more_records(data, max_bytes or _CHUNK)
                    except SSL.WantReadError:
                        pass  # a partial record: read on
                    except SSL.ZeroReturnError:
                        return b""
                    except SSL.SysCallError as exc:
                        if exc.args and exc.args[0] == -1:
                            return b""  # EOF without close_notify: framing is by Content-Length
                        raise trio.BrokenResourceError(str(exc)) from exc
                    except SSL.Error as exc:
                        raise trio.BrokenResourceError(str(exc)) from exc
                if self._pending_out():
                    await self._flush()  # e.g. a TLS 1.3 key update or session ticket
                if not self._took(await self._read_socket()):
                    return b""
        finally:
            self._receiving = False

    def _more_records(self, data: bytes, max_bytes: int) -> bytes:
        """`data` and the records that follow it in what was received, decrypted: one
        read then hands the reader every message the peer sent together (OpenSSL gives
        one record per call, and peers send a record per message)."""
        parts = [data]
        size = len(data)
        while size < max_bytes and self._readable():
            try:
                more = self.connection.recv(max_bytes - size)
            except SSL.Error:  # a partial record, or an end the next read will meet
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts) if len(parts) > 1 else data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._encrypt(data)
        except SSL.Error as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        await self._flush()

    async def send_eof(self) -> None:
        """TLS close_notify, then FIN: we will send nothing more."""
        try:
            self.connection.shutdown()
        except SSL.Error:
            return
        await self._flush()
        send_eof = getattr(self.transport, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        try:
            self.connection.shutdown()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self._flush()
        except (SSL.Error, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport.aclose()
