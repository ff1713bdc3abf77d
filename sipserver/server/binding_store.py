"""Softphone bindings shared between our processes, through a store (the supervisor's on one
machine, Redis or Valkey across machines).

Layout: one hash per number, `sipserver:reg:NUMBER`, a field per binding named
`OWNER|KEY` whose value (JSON) says which process holds the flow, its sibling-hop address
and the binding's wall-clock expiry; the hash's TTL is that of its longest binding. Each
process also keeps `sipserver:alive:OWNER` alive (a few seconds' TTL, refreshed every
second): a binding whose owner is not alive is ignored and removed, so a call for a phone
on a dead process gets 480 within seconds, and a store that comes back empty (the key is
gone) has every binding of ours published again.

The store is never waited on for long: every exchange is bounded (`timeout`), a call whose
lookup fails rings the flows this process holds, and publishing happens in a task of its
own. `cluster_store_unavailable` / `cluster_store_restored` say when it goes and comes back.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio

from sipserver.proxy.shared_bindings import (
    BindingChange,
    BindingsFound,
    RemoteBinding,
    SharedBinding,
)
from sipserver.server.snapshot import ClusterState
from sipserver.sip.flow import Transport
from sipserver.transport.resp import Reply, RespClient, StoreError, milliseconds

log = structlog.get_logger("sipserver")
PREFIX = "sipserver:"
ALIVE_TTL = 4.0  # seconds an owner counts as alive after its last heartbeat
HEARTBEAT = 1.0  # seconds between heartbeats (and retries while the store is down)


def owner_name(worker_index: int, pid: int) -> str:
    """How a process is named in the store: its machine, worker slot and process id (a
    replaced worker is a new owner; the bindings of the one that died are not its)."""
    return f"{socket.gethostname()}.w{worker_index}.{pid}"


def number_key(number: str) -> str:
    return f"{PREFIX}reg:{number}"


def alive_key(owner: str) -> str:
    return f"{PREFIX}alive:{owner}"


def field_name(owner: str, binding: SharedBinding) -> str:
    return f"{owner}|{binding.key}"


@dataclass
class StoreCounters:
    """For /metrics."""

    up: bool = True
    errors: int = 0
    lookups: dict[str, int] = field(default_factory=dict)  # found | none | failed
    published: int = 0
    republished: int = 0
    dropped: int = 0


class BindingStore:
    def __init__(
        self,
        client: RespClient,
        owner: str,
        hop: tuple[str, int],
        ours: Callable[[], list[SharedBinding]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`ours()`: every binding this process holds, to publish them all again."""
        self.client = client
        self.owner = owner
        self.hop = hop
        self._ours = ours
        self._wall = wall
        self.counters = StoreCounters()
        self._pending: list[BindingChange] = []
        self._wake = trio.Event()
        self._down_since: float | None = None
        self._republish = True  # at start, and whenever the store may have lost them

    # --- publishing -------------------------------------------------------------------------
    def changed(self, changes: list[BindingChange]) -> None:
        """Queue changes to our bindings (never waits: the publishing task sends them)."""
        self._pending += changes
        self._wake.set()

    async def run(self) -> None:
        """Publish changes as they come; heartbeat every second; publish everything again
        when the store is new to us (first start, back after a failure, or emptied)."""
        next_beat = trio.current_time()
        while True:
            with trio.move_on_at(next_beat):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                if trio.current_time() >= next_beat:
                    next_beat = trio.current_time() + HEARTBEAT
                    await self._heartbeat()
                if self._republish:
                    await self._publish_all()
                elif self._pending:
                    changes, self._pending = self._pending, []
                    await self._write(changes)
                    withdrawn = sum(change.withdraw for change in changes)
                    log.debug(
                        "cluster_bindings_written",
                        published=len(changes) - withdrawn,
                        withdrawn=withdrawn,
                    )
            except StoreError as exc:
                self._failed(exc)

    async def _heartbeat(self) -> None:
        replies = await self.client.call(
            ("SET", alive_key(self.owner), "1", "PX", milliseconds(ALIVE_TTL), "GET")
        )
        self._restored()
        if replies[0] is None:  # our key was gone: a new or emptied store, or we were away
            self._republish = True

    async def _publish_all(self) -> None:
        self._pending = []  # everything is published now, these with it
        bindings = self._ours()
        await self._write([BindingChange(False, b) for b in bindings])
        self._republish = False
        self.counters.republished += 1
        log.info(
            "cluster_bindings_published", store=str(self.client.address), bindings=len(bindings)
        )

    async def _write(self, changes: list[BindingChange]) -> None:
        commands: list[tuple[str | int, ...]] = []
        now = self._wall()
        for change in changes:
            binding = change.binding
            key, name = number_key(binding.number), field_name(self.owner, binding)
            if change.withdraw:
                commands.append(("HDEL", key, name))
                continue
            value = json.dumps(
                {
                    "owner": self.owner,
                    "hop": list(self.hop),
                    "peer": binding.peer,
                    "contact": binding.contact,
                    "transport": str(binding.transport),
                    "key": binding.key,
                    "connection": binding.connection_id,
                    "expires": round(now + binding.expires_in, 3),
                },
                separators=(",", ":"),
            )
            ttl = milliseconds(binding.expires_in)
            commands += [
                ("HSET", key, name, value),
                ("PEXPIRE", key, ttl, "NX"),
                ("PEXPIRE", key, ttl, "GT"),
            ]
        for start in range(0, len(commands), 300):
            await self.client.call(*commands[start : start + 300])
        self.counters.published += len(changes)

    # --- looking up -------------------------------------------------------------------------
    async def lookup(self, number: str) -> BindingsFound:
        """Other processes' live bindings for the number; on failure, none and why."""
        try:
            found = await self._lookup(number)
        except StoreError as exc:
            self._failed(exc)
            self._count("failed")
            return BindingsFound((), f"the binding store failed: {exc}")
        self._restored()
        self._count("found" if found else "none")
        return BindingsFound(tuple(found))

    async def _lookup(self, number: str) -> list[RemoteBinding]:
        key = number_key(number)
        (reply,) = await self.client.call(("HGETALL", key))
        now = self._wall()
        candidates: list[tuple[bytes, RemoteBinding]] = []
        stale: list[bytes] = []
        for name, value in _pairs(reply):
            remote = _remote(number, value, now)
            if remote is None:
                stale.append(name)
            elif remote.owner != self.owner:
                candidates.append((name, remote))
        owners = sorted({remote.owner for _, remote in candidates})
        alive: set[str] = set()
        if owners:
            (states,) = await self.client.call(("MGET", *[alive_key(o) for o in owners]))
            if isinstance(states, list):
                alive = {o for o, state in zip(owners, states, strict=False) if state is not None}
        found = [remote for _, remote in candidates if remote.owner in alive]
        gone = [(name, remote) for name, remote in candidates if remote.owner not in alive]
        stale += [name for name, _ in gone]
        if stale:  # expired, unreadable, or of a process that is gone
            await self.client.call(("HDEL", key, *stale))
        if gone:
            self.counters.dropped += len(gone)
            log.warning(
                "cluster_bindings_dropped",
                number=number,
                owners=sorted({remote.owner for _, remote in gone}),
                bindings=len(gone),
                reason=f"the owning process sent no heartbeat for {ALIVE_TTL:g} s",
            )
        return found

    def state(self) -> ClusterState:
        counters = self.counters
        return ClusterState(
            str(self.client.address),
            counters.up,
            counters.errors,
            tuple(sorted(counters.lookups.items())),
            counters.dropped,
            counters.republished,
        )

    def _count(self, result: str) -> None:
        self.counters.lookups[result] = self.counters.lookups.get(result, 0) + 1

    # --- the store's state --------------------------------------------------------------------
    def _failed(self, exc: StoreError) -> None:
        self.counters.errors += 1
        self._republish = True  # whatever we publish meanwhile may be lost
        if self._down_since is None:
            self._down_since = trio.current_time()
            self.counters.up = False
            log.warning(
                "cluster_store_unavailable",
                store=str(self.client.address),
                reason=str(exc),
                effect="calls ring the softphone flows this process holds; others get 480",
            )

    def _restored(self) -> None:
        if self._down_since is None:
            return
        seconds = trio.current_time() - self._down_since
        self._down_since = None
        self.counters.up = True
        log.info(
            "cluster_store_restored", store=str(self.client.address), seconds=round(seconds, 3)
        )


def _pairs(reply: Reply) -> list[tuple[bytes, bytes]]:
    if not isinstance(reply, list):
        return []
    items = [item for item in reply if isinstance(item, bytes)]
    return list(zip(items[::2], items[1::2], strict=False))


def _remote(number: str, value: bytes, now: float) -> RemoteBinding | None:
    """A stored binding, or None when it has expired or cannot be read."""
    try:
        data = json.loads(value)
        expires = float(data["expires"])
        if expires <= now:
            return None
        host, port = data["hop"]
        binding = SharedBinding(
            number=number,
            peer=str(data["peer"]),
            contact=str(data["contact"]),
            transport=Transport(data["transport"]),
            key=str(data["key"]),
            connection_id=data.get("connection"),
            expires_in=expires - now,
        )
        return RemoteBinding(binding, str(data["owner"]), (str(host), int(port)))
    except (ValueError, KeyError, TypeError):
        return None
