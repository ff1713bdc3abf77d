"""The shared view of one machine's workers, kept by their supervisor: an in-memory store
on a Unix socket in the supervisor's private folder, speaking the few Redis commands the
workers use (so a worker talks to it exactly as instances talk to Redis or Valkey).
Nothing to install; it lives and dies with the supervisor, and the workers publish their
bindings again when it is new."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from sipserver.transport.resp import Reply, ReplyReader, StoreError

log = structlog.get_logger("sipserver")
MAX_CLIENTS = 256
IDLE_TIMEOUT = 3600.0


@dataclass
class _Entry:
    value: bytes | dict[bytes, bytes]
    expires_at: float = math.inf
    extra: dict[str, int] = field(default_factory=dict)


class LocalStore:
    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._data: dict[bytes, _Entry] = {}
        self._clock = clock

    # --- the data ------------------------------------------------------------------------
    def _get(self, key: bytes) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            del self._data[key]
            return None
        return entry

    def _hash(self, key: bytes) -> dict[bytes, bytes] | None:
        entry = self._get(key)
        if entry is None:
            return None
        if not isinstance(entry.value, dict):
            raise StoreError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return entry.value

    def remove_fields(self, prefix: bytes) -> int:
        """Remove every hash field that starts with `prefix` (a dead worker's bindings)."""
        removed = 0
        for key in list(self._data):
            entry = self._get(key)
            if entry is None or not isinstance(entry.value, dict):
                continue
            for name in [f for f in entry.value if f.startswith(prefix)]:
                del entry.value[name]
                removed += 1
            if not entry.value:
                del self._data[key]
        return removed

    def execute(self, command: list[bytes]) -> Reply:
        if not command:
            raise StoreError("ERR empty command")
        name = command[0].upper().decode(errors="replace")
        handler = getattr(self, f"_cmd_{name.lower()}", None)
        if handler is None:
            raise StoreError(f"ERR unknown command '{name}'")
        result: Reply = handler(command[1:])
        return result

    def _cmd_ping(self, args: list[bytes]) -> Reply:
        return "PONG"

    def _cmd_select(self, args: list[bytes]) -> Reply:
        return "OK"

    def _cmd_flushdb(self, args: list[bytes]) -> Reply:
        self._data.clear()
        return "OK"

    def _cmd_hset(self, args: list[bytes]) -> Reply:
        if len(args) < 3 or len(args) % 2 == 0:
            raise StoreError("ERR wrong number of arguments for 'hset' command")
        values = self._hash(args[0])
        if values is None:
            values = {}
            self._data[args[0]] = _Entry(values)
        added = 0
        for name, value in zip(args[1::2], args[2::2], strict=True):
            added += name not in values
            values[name] = value
        return added

    def _cmd_hdel(self, args: list[bytes]) -> Reply:
        values = self._hash(args[0]) if args else None
        if values is None:
            return 0
        removed = sum(values.pop(name, None) is not None for name in args[1:])
        if not values:
            del self._data[args[0]]
        return removed

    def _cmd_hgetall(self, args: list[bytes]) -> Reply:
        values = self._hash(args[0]) if args else None
        out: list[Reply] = []
        for name, value in (values or {}).items():
            out += [name, value]
        return out

    def _cmd_set(self, args: list[bytes]) -> Reply:
        """SET key value [PX ms] [GET]"""
        if len(args) < 2:
            raise StoreError("ERR wrong number of arguments for 'set' command")
        expires_at, get = math.inf, False
        options = [a.upper() for a in args[2:]]
        for index, option in enumerate(options):
            if option == b"PX" and index + 1 < len(options):
                expires_at = self._clock() + int(args[3 + index]) / 1000
            elif option == b"GET":
                get = True
        old = self._get(args[0])
        self._data[args[0]] = _Entry(args[1], expires_at)
        if get:
            return old.value if old is not None and isinstance(old.value, bytes) else None
        return "OK"

    def _cmd_exists(self, args: list[bytes]) -> Reply:
        return sum(self._get(key) is not None for key in args)

    def _cmd_mget(self, args: list[bytes]) -> Reply:
        out: list[Reply] = []
        for key in args:
            entry = self._get(key)
            out.append(entry.value if entry and isinstance(entry.value, bytes) else None)
        return out

    def _cmd_del(self, args: list[bytes]) -> Reply:
        return sum(self._data.pop(key, None) is not None for key in args)

    def _cmd_pexpire(self, args: list[bytes]) -> Reply:
        """PEXPIRE key ms [NX|GT], as Redis 7: GT treats a key without expiry as infinite."""
        entry = self._get(args[0]) if len(args) >= 2 else None
        if entry is None:
            return 0
        at = self._clock() + int(args[1]) / 1000
        option = args[2].upper() if len(args) > 2 else b""
        if option == b"NX" and entry.expires_at != math.inf:
            return 0
        if option == b"GT" and not at > entry.expires_at:
            return 0
        entry.expires_at = at
        return 1

    # --- the socket -------------------------------------------------------------------------
    async def serve(
        self, path: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(MAX_CLIENTS)
        task_status.started()
        await trio.serve_listeners(self._client, [trio.SocketListener(sock)])

    async def _client(self, stream: trio.SocketStream) -> None:
        reader = ReplyReader()
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    data = await stream.receive_some(65536)
                if idle.cancelled_caught or not data:
                    return
                reader.feed(data)
                out: list[bytes] = []
                while (got := reader.next()) is not None:
                    command = got[0]
                    if not isinstance(command, list):
                        return
                    out.append(_answer(self, [c for c in command if isinstance(c, bytes)]))
                if out:
                    await stream.send_all(b"".join(out))
        except (StoreError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return
        finally:
            await trio.aclose_forcefully(stream)


def _answer(store: LocalStore, command: list[bytes]) -> bytes:
    try:
        return _encode_reply(store.execute(command))
    except StoreError as exc:
        return b"-" + str(exc).encode() + b"\r\n"


def _encode_reply(reply: Reply) -> bytes:
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, str):
        return b"+" + reply.encode() + b"\r\n"
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(_encode_reply(item) for item in reply)
