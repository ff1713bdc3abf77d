"""Call admission counts shared between our processes through the store (the supervisor's
on one machine, Redis or Valkey across machines), so a peer's `max_calls`, a dial plan's and
the server's hold for the server as a whole, not per process.

Layout: one hash, `sipserver:calls`, a field per process (its owner name) whose value (JSON)
is that process's `CallCounts`. Every `INTERVAL` each process writes its own and reads the
others'; a process whose `sipserver:alive:OWNER` key is gone has its field removed and its
calls forgotten. Nothing waits on the store: admission reads the counts last fetched, so a
limit can be passed by the calls admitted elsewhere within one interval. When the store
fails, each process counts alone until it is back (`call_counts_unshared` /
`call_counts_shared`)."""

from __future__ import annotations

import json

import structlog
import trio

from sipserver.proxy.admission import CallCounts, CallLimits, limits_set
from sipserver.server.binding_store import ALIVE_TTL, PREFIX, alive_key
from sipserver.server.live_config import LiveConfig
from sipserver.transport.resp import Reply, RespClient, StoreError, milliseconds

log = structlog.get_logger("sipserver")
COUNTS_KEY = f"{PREFIX}calls"
INTERVAL = 0.1  # seconds between exchanges while limits are configured
KEY_TTL = 10.0  # the hash outlives its last writer by this long


class SharedCallCounts:
    def __init__(
        self,
        client: RespClient,
        owner: str,
        limits: CallLimits,
        config: LiveConfig,
        *,
        heartbeat: bool,
    ) -> None:
        """`heartbeat`: keep our alive key ourselves (no binding store does it for us)."""
        self.client = client
        self.owner = owner
        self.limits = limits
        self._config = config
        self._heartbeat = heartbeat
        self._shared: bool | None = None  # unknown until the first exchange
        self._published = False
        self._learned: tuple[int, dict[str, int]] | None = None  # what we last logged

    async def run(self) -> None:
        while True:
            await trio.sleep(INTERVAL)
            try:
                if limits_set(self._config.current):  # a reload may add or remove them
                    await self.exchange()
                elif self._published:  # limits removed by a reload: take ours away
                    await self.client.call(("HDEL", COUNTS_KEY, self.owner))
                    self._published = False
                    self.limits.count_alone()
            except StoreError as exc:
                self._unshared(exc)

    async def exchange(self) -> None:
        """Write our counts, read the live others' (one round trip, two when some are
        listed)."""
        commands: list[tuple[str | int, ...]] = [
            ("HSET", COUNTS_KEY, self.owner, encode_counts(self.limits.counts())),
            ("PEXPIRE", COUNTS_KEY, milliseconds(KEY_TTL)),
            ("HGETALL", COUNTS_KEY),
        ]
        if self._heartbeat:
            commands.append(("SET", alive_key(self.owner), "1", "PX", milliseconds(ALIVE_TTL)))
        replies = await self.client.call(*commands)
        self._published = True
        listed = {
            owner: counts for owner, counts in _fields(replies[2]).items() if owner != self.owner
        }
        owners = sorted(listed)
        alive: set[str] = set()
        if owners:
            (states,) = await self.client.call(("MGET", *[alive_key(o) for o in owners]))
            if isinstance(states, list):
                alive = {o for o, state in zip(owners, states, strict=False) if state is not None}
            gone = [owner for owner in owners if owner not in alive]
            if gone:
                await self.client.call(("HDEL", COUNTS_KEY, *gone))
        decoded = {owner: decode_counts(listed[owner]) for owner in owners if owner in alive}
        others = {owner: counts for owner, counts in decoded.items() if counts is not None}
        self.limits.counted_elsewhere(others, trio.current_time())
        learned = (self.limits.elsewhere.active, dict(self.limits.elsewhere.by_peer))
        if learned != self._learned:
            self._learned = learned
            log.debug(
                "call_counts_elsewhere",
                processes=len(others),
                active=learned[0],
                by_peer=learned[1],
            )
        if self._shared is not True:
            self._shared = True
            log.info("call_counts_shared", store=str(self.client.address), processes=len(alive) + 1)

    def _unshared(self, exc: StoreError) -> None:
        self.limits.count_alone()
        self._learned = None
        if self._shared is not False:
            self._shared = False
            log.warning(
                "call_counts_unshared",
                store=str(self.client.address),
                reason=str(exc),
                effect="call limits count this process's calls only until the store is back",
            )


def encode_counts(counts: CallCounts) -> str:
    return json.dumps(
        {
            "active": counts.active,
            "peers": counts.by_peer,
            "plans": counts.by_plan,
            "started": counts.started,
        },
        separators=(",", ":"),
    )


def decode_counts(value: bytes) -> CallCounts | None:
    """Another process's counts, or None when they cannot be read."""
    try:
        data = json.loads(value)
        return CallCounts(
            int(data["active"]),
            _names(data["peers"]),
            _names(data["plans"]),
            _names(data["started"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _names(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise TypeError("not a mapping")
    return {str(name): int(count) for name, count in value.items()}


def _fields(reply: Reply) -> dict[str, bytes]:
    if not isinstance(reply, list):
        return {}
    items = [item for item in reply if isinstance(item, bytes)]
    return {
        name.decode(errors="replace"): value
        for name, value in zip(items[::2], items[1::2], strict=False)
    }
