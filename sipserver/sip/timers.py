"""RFC 3261 timer bases (Table 4), also the [timers] table of the configuration: each
field says what it means and which values it takes."""

from __future__ import annotations

from dataclasses import dataclass, field


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _timer_c_ok(value: float) -> str | None:
    return None if value >= 180 else "must be at least 180 s (RFC 3261 §16.6)"


@dataclass(frozen=True, slots=True)
class TimerValues:
    """RFC 3261 Table 4. T1 is the RTT estimate, T2 the cap for non-INVITE
    retransmissions, T4 how long the network holds a message."""

    t1: float = field(default=0.5, metadata={"doc": "RTT estimate (s)", "check": _positive})
    t2: float = field(
        default=4.0, metadata={"doc": "non-INVITE retransmission cap (s)", "check": _positive}
    )
    t4: float = field(
        default=5.0,
        metadata={"doc": "how long the network holds a message (s)", "check": _positive},
    )
    timer_c: float = field(
        default=180.0,
        metadata={
            "doc": "proxy INVITE timer (s), at least 180: a call ringing longer is CANCELled "
            "and answered 408",
            "check": _timer_c_ok,
        },
    )

    def cross_check(self) -> tuple[str, str] | None:
        """A problem between fields, as (key, problem), or None."""
        return ("t2", "must be at least t1") if self.t2 < self.t1 else None
