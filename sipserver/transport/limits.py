"""Connection caps: total and per source address. Connections that have proven no peer
identity yet have budgets of their own, so that strangers can never crowd allow-listed
peers out: plain TCP from an address of no peer, and TLS connections still in their
handshake (apart, so that idle strangers on the SIP port cannot block handshakes on the
TLS port). A TLS connection moves to the peers' budget when its handshake proves it.

Within the strangers' budgets each source address has a share: past it, the address's own
oldest connection is evicted to admit its new one; and when a budget is full, its oldest
connection is evicted. A few addresses holding thousands of idle connections can neither
fill it nor keep anyone out of it, a peer behind the same address included. Handshakes
from the address of a configured peer have a budget of their own, which strangers never
reach."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sipserver.config.schema import LimitsSettings

# peer: proven (or plain TCP from a peer's address); stranger: plain TCP from no peer's
# address; handshake: TLS not yet proven, from no peer's address; peer_handshake: TLS not
# yet proven, from a configured peer's address.
Budget = Literal["peer", "stranger", "handshake", "peer_handshake"]
SHARED_BY_STRANGERS: frozenset[Budget] = frozenset({"stranger", "handshake"})
_WHAT = {
    "stranger": "connections without a peer",
    "handshake": "TLS handshakes",
    "peer_handshake": "TLS handshakes from peers' addresses",
}


@dataclass(eq=False, slots=True)
class Admission:
    """One connection counted in. `evict` closes it (with a reason) when a newer stranger
    needs its place."""

    address: str
    budget: Budget
    evict: Callable[[str], None] | None = None
    counted: bool = True


class ConnectionTable:
    def __init__(
        self,
        max_total: int,
        max_per_address: int,
        max_unverified: int = 1000,
        max_unverified_per_address: int = 50,
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.max_unverified = max_unverified  # for each budget other than the peers'
        self.max_unverified_per_address = max_unverified_per_address
        self._per_address: Counter[str] = Counter()
        self._open: Counter[str] = Counter()  # budget -> connections
        # Strangers' connections oldest first, to evict (dicts keep insertion order): per
        # budget, and per budget and address (whose length is the address's share).
        self._by_age: dict[str, dict[Admission, None]] = {b: {} for b in SHARED_BY_STRANGERS}
        self._by_age_at: dict[tuple[str, str], dict[Admission, None]] = {}
        self.evicted = 0

    @classmethod
    def of(cls, limits: LimitsSettings) -> ConnectionTable:
        table = cls(0, 0)
        table.configure(limits)
        return table

    def configure(self, limits: LimitsSettings) -> None:
        """The caps a (re)loaded configuration sets; connections already open stay."""
        self.max_total = limits.max_connections
        self.max_per_address = limits.max_connections_per_address
        self.max_unverified = limits.max_unverified_connections
        self.max_unverified_per_address = limits.max_unverified_per_address

    @property
    def total(self) -> int:
        return self._open["peer"]

    def open_in(self, budget: Budget) -> int:
        return self._open[budget]

    def admit(
        self, address: str, budget: Budget = "peer", evict: Callable[[str], None] | None = None
    ) -> Admission | str:
        """Count a new connection in, or say why it is refused."""
        if self._per_address[address] >= self.max_per_address:
            return (
                f"per-address connection limit reached ({self.max_per_address}, "
                "limits.max_connections_per_address)"
            )
        if budget in SHARED_BY_STRANGERS:
            own = self._by_age_at.get((budget, address), {})
            if len(own) >= self.max_unverified_per_address:
                self._evict(
                    next(iter(own)),
                    f"evicted, the oldest of this address's {self.max_unverified_per_address} "
                    f"{_WHAT[budget]}, to admit its newer one (limits.max_unverified_per_address)",
                )
            elif self._full(budget) is not None and self._by_age[budget]:
                self._evict(
                    next(iter(self._by_age[budget])),
                    f"evicted, the oldest of {self.max_unverified} {_WHAT[budget]}, to admit "
                    "a newer one (limits.max_unverified_connections)",
                )
        refusal = self._full(budget)
        if refusal is not None:
            return refusal
        admission = Admission(address, budget, evict)
        self._count(admission, 1)
        return admission

    def promote(self, admission: Admission) -> str | None:
        """A connection proved its peer: move it to the peers' budget."""
        refusal = self._full("peer")
        if refusal is None:
            self._count(admission, -1)
            admission.budget = "peer"
            self._count(admission, 1)
        return refusal

    def release(self, admission: Admission) -> None:
        if admission.counted:
            self._count(admission, -1)
            admission.counted = False

    def _evict(self, oldest: Admission, why: str) -> None:
        self.release(oldest)
        self.evicted += 1
        if oldest.evict is not None:
            oldest.evict(why)

    def _count(self, admission: Admission, step: int) -> None:
        address, budget = admission.address, admission.budget
        self._per_address[address] += step
        if self._per_address[address] <= 0:
            del self._per_address[address]
        self._open[budget] += step
        if budget in SHARED_BY_STRANGERS:
            key = (budget, address)
            if step > 0:
                self._by_age[budget][admission] = None
                self._by_age_at.setdefault(key, {})[admission] = None
            else:
                self._by_age[budget].pop(admission, None)
                own = self._by_age_at[key]
                own.pop(admission, None)
                if not own:
                    del self._by_age_at[key]

    def _full(self, budget: Budget) -> str | None:
        if budget == "peer" and self._open["peer"] >= self.max_total:
            return f"server connection limit reached ({self.max_total}, limits.max_connections)"
        if budget != "peer" and self._open[budget] >= self.max_unverified:
            return (
                f"limit of {_WHAT[budget]} reached ({self.max_unverified}, "
                "limits.max_unverified_connections)"
            )
        return None
