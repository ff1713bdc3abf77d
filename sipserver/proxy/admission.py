"""Call admission control against toll fraud and floods: how many calls each peer, each
dial plan and the server have in progress, and how fast each peer starts new ones.

A call counts from its INVITE until it fails or its dialog ends (BYE, or the built-in
answering target hanging up). Limits are read from the configuration at each new call,
so a reload changes them at once: calls in progress carry on, and below a lowered limit no
new call is admitted until the count is under it.

With several processes (workers, instances) each counts the calls it admitted and learns the
others' counts through the shared store a few times a second (`CallCounts`): a limit holds
for the server as a whole, give or take the calls admitted elsewhere since the last
exchange. Each process keeps its own token bucket per peer and takes from it the calls the
peer started elsewhere. When the store is away, each process counts alone."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from sipserver.config.schema import Config, DialPlanSettings, PeerSettings


@dataclass(frozen=True, slots=True)
class LimitReached:
    limit: str  # peer_max_calls | peer_max_call_rate | plan_max_calls | server_max_calls
    name: str  # the peer's or plan's name ("" for the server)
    warning: str  # what the Warning header and the log line say


@dataclass(frozen=True, slots=True)
class CallCounts:
    """What one process tells the others: its calls in progress (in all, per peer, per dial
    plan) and how many calls each peer has started there since it began."""

    active: int = 0
    by_peer: Mapping[str, int] = field(default_factory=dict)
    by_plan: Mapping[str, int] = field(default_factory=dict)
    started: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    tokens: float
    updated: float
    rate: float
    burst: int

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


def limits_set(config: Config) -> bool:
    """Whether any call limit is configured (only then are counts worth sharing)."""
    return bool(
        config.limits.max_calls
        or any(p.max_calls or p.max_call_rate for p in config.peers)
        or any(plan.max_calls for plan in config.dial_plans)
    )


class CallLimits:
    def __init__(self) -> None:
        self._calls: dict[str, tuple[str, str]] = {}  # Call-ID -> (peer, dial plan)
        self.by_peer: Counter[str] = Counter()
        self.by_plan: Counter[str] = Counter()
        self.refused: Counter[tuple[str, str]] = Counter()  # (limit, name) -> refusals
        self.started: Counter[str] = Counter()  # peer -> calls admitted here, ever
        self._buckets: dict[str, _Bucket] = {}
        self._elsewhere = CallCounts()  # the other processes' calls, summed
        self._seen_started: dict[str, Mapping[str, int]] = {}  # owner -> its last `started`

    @property
    def active(self) -> int:
        return len(self._calls)

    @property
    def elsewhere(self) -> CallCounts:
        """The other processes' calls in progress, as last learned."""
        return self._elsewhere

    def counts(self) -> CallCounts:
        """Ours, for the other processes."""
        return CallCounts(self.active, dict(self.by_peer), dict(self.by_plan), dict(self.started))

    def counted_elsewhere(self, others: Mapping[str, CallCounts], now: float) -> None:
        """The live other processes' counts, by owner (all of them: one that is missing
        has gone, and its calls with it). Calls a peer started elsewhere since the last
        exchange are taken from its bucket here."""
        by_peer: Counter[str] = Counter()
        by_plan: Counter[str] = Counter()
        for owner, theirs in others.items():
            by_peer.update(theirs.by_peer)
            by_plan.update(theirs.by_plan)
            before = self._seen_started.get(owner)
            if before is None:
                continue  # new to us: what it started before now is not news
            for peer, started in theirs.started.items():
                bucket = self._buckets.get(peer)
                if bucket is not None and started > before.get(peer, 0):
                    bucket.refill(now)
                    bucket.tokens = max(
                        -bucket.burst, bucket.tokens - started + before.get(peer, 0)
                    )
        total = sum(theirs.active for theirs in others.values())
        self._elsewhere = CallCounts(total, by_peer, by_plan)
        self._seen_started = {owner: theirs.started for owner, theirs in others.items()}

    def count_alone(self) -> None:
        """The store is away: limits hold for this process's calls only."""
        self._elsewhere = CallCounts()
        self._seen_started = {}

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
        self.started[peer.name] += 1
        return None

    def ended(self, call_id: str) -> None:
        """The call failed, or its dialog ended (idempotent)."""
        counted = self._calls.pop(call_id, None)
        if counted is None:
            return
        peer, plan = counted
        for counter, name in ((self.by_peer, peer), (self.by_plan, plan)):
            left = counter.get(name, 0) - 1
            if left > 0:
                counter[name] = left
            else:  # pop, not del: Counter's own __delitem__ is a Python call
                counter.pop(name, None)

    def _over(
        self, config: Config, peer: PeerSettings, plan: DialPlanSettings, now: float
    ) -> LimitReached | None:
        elsewhere = self._elsewhere
        server_max = config.limits.max_calls
        active = self.active + elsewhere.active
        if server_max and active >= server_max:
            return LimitReached(
                "server_max_calls",
                "",
                f"The server has {active} calls in progress, its limit "
                f"(limits.max_calls {server_max})",
            )
        for limit, who, name, here, there, most in (
            (
                "plan_max_calls",
                "Dial plan",
                plan.name,
                self.by_plan,
                elsewhere.by_plan,
                plan.max_calls,
            ),
            ("peer_max_calls", "Peer", peer.name, self.by_peer, elsewhere.by_peer, peer.max_calls),
        ):
            count = here.get(name, 0) + there.get(name, 0)
            if most and count >= most:
                return LimitReached(
                    limit,
                    name,
                    f"{who} {name} has {count} calls in progress, its max_calls ({most})",
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
            bucket = self._buckets[peer.name] = _Bucket(
                float(burst), now, peer.max_call_rate, burst
            )
        bucket.rate, bucket.burst = peer.max_call_rate, burst  # as a reload left them
        bucket.refill(now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


def _burst(peer: PeerSettings) -> int:
    """max_call_burst, or by default one second's worth of calls."""
    return peer.max_call_burst or max(1, math.ceil(peer.max_call_rate))
