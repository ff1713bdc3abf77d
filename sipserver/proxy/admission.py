"""Call admission control against toll fraud and floods: how many calls each peer, each
dial plan and the server have in progress, and how fast each peer starts new ones.

A call counts from its INVITE until it fails or its dialog ends (BYE, or the built-in
answering target hanging up). Limits are read from the configuration at each new call,
so a reload changes them at once: calls in progress carry on, and below a lowered limit no
new call is admitted until the count is under it. Counts are per process."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from sipserver.settings import Config, DialPlanSettings, PeerSettings


@dataclass(frozen=True, slots=True)
class LimitReached:
    limit: str  # peer_max_calls | peer_max_call_rate | plan_max_calls | server_max_calls
    name: str  # the peer's or plan's name ("" for the server)
    warning: str  # what the Warning header and the log line say


@dataclass(slots=True)
class _Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    tokens: float
    updated: float


class CallLimits:
    def __init__(self) -> None:
        self._calls: dict[str, tuple[str, str]] = {}  # Call-ID -> (peer, dial plan)
        self.by_peer: Counter[str] = Counter()
        self.by_plan: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()  # (limit, name) -> refusals
        self._buckets: dict[str, _Bucket] = {}

    @property
    def active(self) -> int:
        return len(self._calls)

    def admit(
        self,
        config: Config,
        peer: PeerSettings,
        plan: DialPlanSettings,
        call_id: str,
        now: float,
    ) -> LimitReached | None:
        """Count a new call in, or say which limit refuses it."""
        if call_id in self._calls:  # a retransmission or a second branch of ours
            return None
        reached = self._over(config, peer, plan, now)
        if reached is not None:
            self.refused[(reached.limit, reached.name)] += 1
            return reached
        self._calls[call_id] = (peer.name, plan.name)
        self.by_peer[peer.name] += 1
        self.by_plan[plan.name] += 1
        return None

    def ended(self, call_id: str) -> None:
        """The call failed, or its dialog ended (idempotent)."""
        counted = self._calls.pop(call_id, None)
        if counted is None:
            return
        peer, plan = counted
        for counter, name in ((self.by_peer, peer), (self.by_plan, plan)):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]

    def _over(
        self, config: Config, peer: PeerSettings, plan: DialPlanSettings, now: float
    ) -> LimitReached | None:
        server_max = config.limits.max_calls
        if server_max and self.active >= server_max:
            return LimitReached(
                "server_max_calls",
                "",
                f"The server has {self.active} calls in progress, its limit "
                f"(limits.max_calls {server_max})",
            )
        for limit, who, name, counts, most in (
            ("plan_max_calls", "Dial plan", plan.name, self.by_plan, plan.max_calls),
            ("peer_max_calls", "Peer", peer.name, self.by_peer, peer.max_calls),
        ):
            if most and counts[name] >= most:
                return LimitReached(
                    limit,
                    name,
                    f"{who} {name} has {counts[name]} calls in progress, its max_calls ({most})",
                )
        if peer.max_call_rate and not self._take_token(peer, now):
            return LimitReached(
                "peer_max_call_rate",
                peer.name,
                f"Peer {peer.name} starts calls faster than its max_call_rate "
                f"({peer.max_call_rate:g}/s, burst {_burst(peer)})",
            )
        return None

    def _take_token(self, peer: PeerSettings, now: float) -> bool:
        burst = _burst(peer)
        bucket = self._buckets.get(peer.name)
        if bucket is None:
            bucket = self._buckets[peer.name] = _Bucket(float(burst), now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * peer.max_call_rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


def _burst(peer: PeerSettings) -> int:
    """max_call_burst, or by default one second's worth of calls."""
    return peer.max_call_burst or max(1, math.ceil(peer.max_call_rate))
