"""Target health from OPTIONS pings: down after N failures in a row, up on a success."""

from __future__ import annotations

from dataclasses import dataclass

from sipserver.config.schema import PeerSettings


@dataclass(slots=True)
class TargetHealth:
    up: bool = True
    failures: int = 0
    last_reason: str = ""


class HealthTable:
    def __init__(self, down_after: int) -> None:
        self.down_after = down_after
        self._state: dict[str, TargetHealth] = {}

    def is_up(self, peer: PeerSettings) -> bool:
        state = self._state.get(peer.name)
        return state is None or state.up

    def record(self, peer: PeerSettings, ok: bool, reason: str) -> bool | None:
        """Record one health check result. Returns the new state when it changed."""
        state = self._state.setdefault(peer.name, TargetHealth())
        state.last_reason = reason
        if ok:
            state.failures = 0
            if not state.up:
                state.up = True
                return True
            return None
        state.failures += 1
        if state.up and state.failures >= self.down_after:
            state.up = False
            return False
        return None

    def carry_over(self, previous: HealthTable, keep: set[str]) -> None:
        """Keep what we know about these targets across a configuration reload; every other
        target starts fresh (up)."""
        self._state = {name: state for name, state in previous._state.items() if name in keep}

    def snapshot(self) -> dict[str, TargetHealth]:
        return dict(self._state)
