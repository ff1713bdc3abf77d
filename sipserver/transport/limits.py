"""Connection caps: total and per source address. Connections that have proven no peer
identity yet have budgets of their own, so that strangers can never crowd allow-listed
peers out: plain TCP from an address of no peer, and TLS connections still in their
handshake (apart, so that idle strangers on the SIP port cannot block handshakes on the
TLS port). A TLS connection moves to the peers' budget when its handshake proves it."""

from __future__ import annotations

from collections import Counter
from typing import Literal

Budget = Literal["peer", "stranger", "handshake"]


class ConnectionTable:
    def __init__(self, max_total: int, max_per_address: int, max_unverified: int = 1000) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.max_unverified = max_unverified  # for strangers, and again for handshakes
        self._per_address: Counter[str] = Counter()
        self._open: Counter[str] = Counter()  # budget -> connections

    @property
    def total(self) -> int:
        return self._open["peer"]

    def admit(self, address: str, budget: Budget = "peer") -> str | None:
        """Count a new connection in, or say why it is refused."""
        if self._per_address[address] >= self.max_per_address:
            return (
                f"per-address connection limit reached ({self.max_per_address}, "
                "limits.max_connections_per_address)"
            )
        refusal = self._full(budget)
        if refusal is not None:
            return refusal
        self._open[budget] += 1
        self._per_address[address] += 1
        return None

    def promote(self, from_budget: Budget = "handshake") -> str | None:
        """A connection proved its peer: move it to the peers' budget."""
        refusal = self._full("peer")
        if refusal is None:
            self._open[from_budget] -= 1
            self._open["peer"] += 1
        return refusal

    def release(self, address: str, budget: Budget = "peer") -> None:
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]
        self._open[budget] -= 1

    def _full(self, budget: Budget) -> str | None:
        if budget == "peer" and self._open["peer"] >= self.max_total:
            return f"server connection limit reached ({self.max_total}, limits.max_connections)"
        if budget != "peer" and self._open[budget] >= self.max_unverified:
            what = "TLS handshakes" if budget == "handshake" else "connections without a peer"
            return (
                f"limit of {what} reached ({self.max_unverified}, "
                "limits.max_unverified_connections)"
            )
        return None
