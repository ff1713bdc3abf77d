"""A trio Stream that runs TLS with pyOpenSSL over memory BIOs.

trio's own SSLStream is built on the stdlib ssl module, which cannot record *why* a
client certificate failed verification together with the certificate itself, and cannot
give us the peer's chain on Python 3.11. pyOpenSSL can, so TLS runs here: the socket
stays a trio stream and OpenSSL only ever sees bytes.
"""

from __future__ import annotations

import contextlib

import trio
from OpenSSL import SSL

_CHUNK = 65536
_OUT_CHUNK = 1 << 18  # larger than anything one send leaves in the BIO


class TLSStream(trio.abc.Stream):
    def __init__(self, transport: trio.abc.Stream, connection: SSL.Connection) -> None:
        self.transport = transport
        self.connection = connection
        # One lock covers draining OpenSSL's outgoing BIO and writing it to the socket,
        # so bytes from concurrent senders (and from the reader's post-handshake
        # messages) reach the wire in the order OpenSSL produced them.
        self._write_lock = trio.Lock()
        self._read_guard = trio.StrictFIFOLock()

    async def _flush(self) -> None:
        async with self._write_lock:
            while True:
                try:
                    data = self.connection.bio_read(_OUT_CHUNK)
                except SSL.WantReadError:
                    return
                if not data:
                    return
                await self.transport.send_all(data)
                if len(data) < _OUT_CHUNK:
                    return  # the BIO is empty: no need to ask (and catch WantReadError)

    async def _fill(self) -> bool:
        data = await self.transport.receive_some(_CHUNK)
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
            await self._flush()
            return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        async with self._read_guard:
            while True:
                try:
                    return self.connection.recv(max_bytes or _CHUNK)
                except SSL.WantReadError:
                    pass
                except SSL.ZeroReturnError:
                    return b""
                except SSL.SysCallError as exc:
                    if exc.args and exc.args[0] == -1:
                        return b""  # EOF without close_notify: SIP framing is by Content-Length
                    raise trio.BrokenResourceError(str(exc)) from exc
                except SSL.Error as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                await self._flush()
                if not await self._fill():
                    return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = self.connection.send(bytes(view[:16384]))
                view = view[sent:]
        except SSL.Error as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        await self._flush()

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
