"""The store client and the supervisor's store, through a real Unix socket: replies read
however the bytes arrive, the few Redis commands with Redis 7's meaning (PEXPIRE NX/GT,
SET … GET), a dead worker's fields removed, and a store that does not answer costs no
more than the timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sipserver.server.local_store import LocalStore
from sipserver.transport.resp import ReplyReader, RespClient, StoreAddress, StoreError, encode


def test_store_addresses() -> None:
    assert str(StoreAddress.parse("redis://10.0.0.5:6380/2")) == "redis://10.0.0.5:6380/2"
    assert StoreAddress.parse("redis://cache").port == 6379
    assert StoreAddress.parse("unix:/run/x.sock?db=1") == StoreAddress(None, 0, "/run/x.sock", 1)
    for bad in ("http://x", "redis://", "redis://h/db"):
        with pytest.raises(ValueError):
            StoreAddress.parse(bad)


REPLY = b"*3\r\n$5\r\nhello\r\n:42\r\n*2\r\n$-1\r\n+OK\r\n"


@given(st.lists(st.integers(min_value=1, max_value=len(REPLY) - 1), unique=True))
def test_a_reply_is_read_however_it_was_split(cuts: list[int]) -> None:
    reader = ReplyReader()
    got = []
    start = 0
    for end in [*sorted(cuts), len(REPLY)]:
        reader.feed(REPLY[start:end])
        start = end
        while (reply := reader.next()) is not None:
            got.append(reply[0])
    assert got == [[b"hello", 42, [None, "OK"]]]


def test_an_error_reply_is_a_store_error() -> None:
    reader = ReplyReader()
    reader.feed(b"-ERR unknown command\r\n")
    with pytest.raises(StoreError, match="unknown command"):
        reader.next()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(store: LocalStore, *command: str) -> object:
    reader = ReplyReader()
    reader.feed(encode(command))
    parsed = reader.next()
    assert parsed is not None and isinstance(parsed[0], list)
    return store.execute([c for c in parsed[0] if isinstance(c, bytes)])


def test_the_supervisors_store_keeps_redis_meanings() -> None:
    clock = Clock()
    store = LocalStore(clock)
    assert run(store, "HSET", "n", "w1|a", "x", "w2|b", "y") == 2
    assert run(store, "PEXPIRE", "n", "5000", "GT") == 0  # no expiry counts as infinite
    assert run(store, "PEXPIRE", "n", "5000", "NX") == 1
    assert run(store, "PEXPIRE", "n", "1000", "GT") == 0
    assert run(store, "PEXPIRE", "n", "9000", "GT") == 1
    assert run(store, "HGETALL", "n") == [b"w1|a", b"x", b"w2|b", b"y"]
    assert store.remove_fields(b"w1|") == 1
    assert run(store, "HGETALL", "n") == [b"w2|b", b"y"]
    clock.now += 9.001
    assert run(store, "HGETALL", "n") == []  # expired with its TTL
    assert run(store, "SET", "alive", "1", "PX", "4000", "GET") is None
    assert run(store, "SET", "alive", "1", "PX", "4000", "GET") == b"1"
    assert run(store, "MGET", "alive", "other") == [b"1", None]
    clock.now += 4.0
    assert run(store, "MGET", "alive") == [None]
    with pytest.raises(StoreError, match="unknown command"):
        run(store, "KEYS", "*")


async def test_client_and_store_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "store.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(LocalStore().serve, path)
        client = RespClient(StoreAddress.parse(f"unix:{path}"), 1.0)
        replies = await client.call(("HSET", "k", "f", "v"), ("HGETALL", "k"), ("PING",))
        assert replies == [1, [b"f", b"v"], "PONG"]
        with pytest.raises(StoreError, match="refused"):
            await client.call(("NOPE",))
        assert await client.call(("PING",)) == ["PONG"]  # a new connection after the error
        await client.close()
        nursery.cancel_scope.cancel()


async def test_a_store_that_does_not_answer_costs_the_timeout_only(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(1)  # accepts (the kernel does) but never answers
    client = RespClient(StoreAddress.parse(f"unix:{path}"), 0.2)
    with (
        trio.move_on_after(5) as guard,
        pytest.raises(StoreError, match=r"no answer within 0\.2 s"),
    ):
        await client.call(("PING",))
    assert not guard.cancelled_caught
    with pytest.raises(StoreError, match="cannot reach"):
        await RespClient(StoreAddress.parse(f"unix:{tmp_path}/none.sock"), 0.2).call(("PING",))
    sock.close()
