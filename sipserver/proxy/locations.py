"""Where targets that are known only by their FQDN are (RFC 3263): what the shell's DNS
lookups found, cached for their TTL, and the calls waiting for a lookup. The core asks
for a `Lookup` and goes on with other work; the shell runs it (NAPTR, SRV, A/AAAA, each
bounded in time) and hands back a `Located`, which resumes the calls that waited."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sipserver.sip.flow import Transport

FAILED_LOOKUP_TTL: Final = (
    10.0  # seconds a failed lookup is remembered: a failover step, not a storm
)
LONGEST_TTL: Final = 3600.0

W = TypeVar("W")  # what waits for a lookup (a call)


@dataclass(frozen=True, slots=True)
class Lookup:
    """A target to locate: its FQDN, the transport we will use, the configured port (for
    A/AAAA without SRV)."""

    fqdn: str
    transport: Transport
    port: int


@dataclass(frozen=True, slots=True)
class Located:
    """What a lookup found: addresses in the order to try them (SRV priority, then weight),
    each one more failover step; or why it found none."""

    destinations: tuple[tuple[str, int], ...]
    ttl: float
    how: str  # naptr+srv | srv | a (no SRV) | failed
    error: str | None = None
    naptr_error: str | None = None  # the NAPTR query failed; SRV and A/AAAA were asked anyway


class Locations(Generic[W]):
    def __init__(self) -> None:
        self._cache: dict[Lookup, tuple[float, Located]] = {}
        self._waiting: dict[Lookup, list[W]] = {}
        self._asked: list[Lookup] = []

    def get(self, lookup: Lookup, now: float) -> Located | None:
        cached = self._cache.get(lookup)
        if cached is None or cached[0] <= now:
            return None
        return cached[1]

    def wait(self, lookup: Lookup, waiter: W) -> None:
        """Park `waiter` until the lookup is answered (asking for it if nobody has)."""
        self.prefetch(lookup)
        self._waiting[lookup].append(waiter)

    def prefetch(self, lookup: Lookup) -> None:
        """Ask for the lookup unless it is under way."""
        if lookup not in self._waiting:
            self._waiting[lookup] = []
            self._asked.append(lookup)

    def take_lookups(self) -> Sequence[Lookup]:
        if not self._asked:  # the shell asks after every message: no new list each time
            return ()
        asked, self._asked = self._asked, []
        return asked

    def resolved(self, lookup: Lookup, located: Located, now: float) -> list[W]:
        """Remember the answer (a failure briefly) and hand back who waited for it."""
        ttl = FAILED_LOOKUP_TTL if located.error else min(max(located.ttl, 1.0), LONGEST_TTL)
        self._cache[lookup] = (now + ttl, located)
        if len(self._cache) > 4096:  # targets are configured, but FQDNs can change by reload
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return self._waiting.pop(lookup, [])

    def pending(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())
