"""Connection caps: total and per source address."""

from __future__ import annotations

from collections import Counter


class ConnectionTable:
    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._per_address: Counter[str] = Counter()
        self.total = 0

    def admit(self, address: str) -> str | None:
        """Count a new connection in, or say why it is refused."""
        if self.total >= self.max_total:
            return f"server connection limit reached ({self.max_total}, limits.max_connections)"
        if self._per_address[address] >= self.max_per_address:
            return (
                f"per-address connection limit reached ({self.max_per_address}, "
                "limits.max_connections_per_address)"
            )
        self._per_address[address] += 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]
        self.total -= 1
