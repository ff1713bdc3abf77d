"""A small client of the Redis protocol (RESP2) over trio: what sipserver needs of a store
(Redis or Valkey across machines, the supervisor's own store between workers) and no more.

Why not a library: redis-py and valkey-py speak asyncio only (trio would need a bridge
thread on every call), and the calls we make are a handful of hash and key commands.
Commands are pipelined: a batch goes out in one write and its replies are read in order.
Every batch is bounded in time; a connection that failed or timed out is dropped and the
next batch opens a new one, so a store that comes back is used again at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from sipserver.errors import SipServerError

Reply = bytes | int | str | list["Reply"] | None
MAX_REPLY_BYTES = 64 * 1024 * 1024  # a store that answers more than this is not one of ours


class StoreError(SipServerError):
    """The store could not be reached, timed out, or answered with an error."""


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """`redis://HOST:PORT/DB` (Redis, Valkey) or `unix:PATH` (a Unix socket, optionally
    `unix:PATH?db=N`)."""

    host: str | None
    port: int
    path: str | None
    db: int

    @classmethod
    def parse(cls, url: str) -> StoreAddress:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            path = parts.path or parts.netloc
            if not path:
                raise ValueError("a unix: store needs a socket path")
            db = int(parts.query[3:]) if parts.query.startswith("db=") else 0
            return cls(None, 0, path, db)
        if parts.scheme != "redis":
            raise ValueError(f"store URL scheme must be redis or unix, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("a redis: store needs a host")
        db_text = parts.path.strip("/") or "0"
        if not db_text.isascii() or not db_text.isdigit():
            raise ValueError(f"the database in {url!r} must be a number")
        return cls(parts.hostname, parts.port or 6379, None, int(db_text))

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def encode(command: Sequence[str | bytes | int]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for item in command:
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ReplyReader:
    """Replies out of the bytes a store sent: `feed`, then `next()` until it gives None."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._at = 0

    def feed(self, data: bytes | bytearray) -> None:
        if self._at:
            del self._buffer[: self._at]
            self._at = 0
        self._buffer += data
        if len(self._buffer) > MAX_REPLY_BYTES:
            raise StoreError("the store's reply is larger than we accept")

    def next(self) -> tuple[Reply] | None:
        """The next whole reply (in a 1-tuple: a reply may itself be None), else None."""
        parsed = self._parse(self._at)
        if parsed is None:
            return None
        reply, self._at = parsed
        return (reply,)

    def _line(self, at: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(b"\r\n", at)
        if end < 0:
            return None
        return bytes(self._buffer[at:end]), end + 2

    def _parse(self, at: int) -> tuple[Reply, int] | None:
        line = self._line(at + 1)
        if at >= len(self._buffer) or line is None:
            return None
        kind, (text, after) = self._buffer[at : at + 1], line
        if kind == b"+":
            return text.decode(errors="replace"), after
        if kind == b"-":
            raise StoreError(f"the store refused: {text.decode(errors='replace')}")
        if kind == b":":
            return int(text), after
        if kind == b"$":
            length = int(text)
            if length < 0:
                return None, after
            if len(self._buffer) < after + length + 2:
                return None
            return bytes(self._buffer[after : after + length]), after + length + 2
        if kind == b"*":
            count = int(text)
            if count < 0:
                return None, after
            items: list[Reply] = []
            for _ in range(count):
                parsed = self._parse(after)
                if parsed is None:
                    return None
                item, after = parsed
                items.append(item)
            return items, after
        raise StoreError(f"the store sent something that is not RESP ({bytes(kind)!r})")


class RespClient:
    def __init__(self, address: StoreAddress, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._stream: trio.abc.Stream | None = None
        self._reader = ReplyReader()
        self._lock = trio.Lock()

    async def call(self, *commands: Sequence[str | bytes | int]) -> list[Reply]:
        """Send the commands in one write; their replies, in order. Raises StoreError."""
        async with self._lock:
            try:
                with trio.fail_after(self.timeout):
                    return await self._exchange(commands)
            except trio.TooSlowError:
                await self.close()
                raise StoreError(f"no answer within {self.timeout:g} s") from None
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self.close()
                raise StoreError(f"cannot reach {self.address}: {_why(exc)}") from None
            except (StoreError, ValueError):
                await self.close()
                raise

    async def _exchange(self, commands: Sequence[Sequence[str | bytes | int]]) -> list[Reply]:
        if self._stream is None:
            self._stream = await self._open()
            self._reader = ReplyReader()
            if self.address.db:
                await self._stream.send_all(encode(("SELECT", self.address.db)))
                await self._replies(1)
        await self._stream.send_all(b"".join(encode(c) for c in commands))
        return await self._replies(len(commands))

    async def _open(self) -> trio.abc.Stream:
        address = self.address
        if address.path is not None:
            return await trio.open_unix_socket(address.path)
        assert address.host is not None
        return await trio.open_tcp_stream(address.host, address.port)

    async def _replies(self, count: int) -> list[Reply]:
        assert self._stream is not None
        replies: list[Reply] = []
        while len(replies) < count:
            got = self._reader.next()
            if got is not None:
                replies.append(got[0])
                continue
            data = await self._stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("the store closed the connection")
            self._reader.feed(data)
        return replies

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
