"""Counters the shell keeps, and the frozen snapshot of everything /healthz and /metrics
show, taken at scrape time, so the admin listener reads values and imports no server."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.events import (
    Answered,
    CallCompleted,
    CallRefused,
    Event,
    MessageMalformed,
    UnknownSourceRefused,
)
from sipserver.sip.validate import KNOWN_METHODS

# Seconds from a call's INVITE to its final answer, by dial plan.
SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(SETUP_BUCKETS))
    total: float = 0.0
    observed: int = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(SETUP_BUCKETS):
            if value <= bound:
                self.counts[index] += 1
                break
        self.total += value
        self.observed += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, calls at or below it), then +Inf."""
        running, out = 0, []
        for bound, count in zip(SETUP_BUCKETS, self.counts, strict=True):
            running += count
            out.append((str(bound), float(running)))
        out.append(("+Inf", float(self.observed)))
        return out


@dataclass
class ServerStats:
    messages: Counter[tuple[str, str, str, str]] = field(
        default_factory=Counter
    )  # direction, transport, kind, label
    tls_handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # result, reason
    reloads: Counter[str] = field(default_factory=Counter)  # ok | failed
    # Per peer, with label values from the configuration or closed sets only (an attacker's
    # bytes never make a series): "" is a source that is no configured peer.
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)  # peer, reason
    peer_handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # peer, session
    setup_seconds: dict[str, Histogram] = field(default_factory=dict)  # by dial plan

    def note_event(self, event: Event) -> None:
        """What the core said happened, counted: refusals by peer and reason, and the
        setup time of each call by dial plan."""
        if isinstance(event, CallCompleted):
            if event.dial_plan is not None and event.method == "INVITE":
                plan = self.setup_seconds.setdefault(event.dial_plan, Histogram())
                plan.observe(event.setup_ms / 1000)
        elif isinstance(event, UnknownSourceRefused):
            self.refusals[("", "unknown_source")] += 1
        elif isinstance(event, MessageMalformed):
            self.refusals[(event.peer or "", f"malformed_{event.kind}")] += 1
        elif isinstance(event, CallRefused):
            self.refusals[(event.peer or "", event.refusal)] += 1
        elif type(event) is Answered and event.status >= 400:
            self.refusals[(event.peer or "", f"request_refused_{event.status // 100}xx")] += 1

    def count_message(self, direction: str, transport: str, data: bytes) -> None:
        """Labels come from closed sets (known methods or "other", status classes): nothing
        a peer sends can create a new series."""
        if data.startswith(b"SIP/2.0 "):
            label = _STATUS_CLASSES.get(data[8:9], "other")
            self.messages[(direction, transport, "response", label)] += 1
        elif data and data[0] not in _CR_LF:
            space = data.find(b" ", 0, 20)
            label = _METHODS.get(data[:space], "other") if space > 0 else "other"
            self.messages[(direction, transport, "request", label)] += 1


_CR_LF = (13, 10)
_METHODS = {name.encode(): name for name in KNOWN_METHODS}
_STATUS_CLASSES = {str(n).encode(): f"{n}xx" for n in range(1, 7)}


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The shared binding store as this process sees it."""

    store: str
    up: bool
    errors: int  # failed exchanges
    lookups: tuple[tuple[str, int], ...]  # found | none | failed -> count
    dropped: int  # bindings of processes that were gone
    republished: int  # times every binding of ours was published again


@dataclass(frozen=True, slots=True)
class CertificateState:
    role: str  # server | trust_anchor
    info: CertInfo


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    taken_at: dt.datetime
    listeners: tuple[str, ...]
    draining: bool
    overloaded: bool  # new calls are refused with 503 (server/overload.py)
    calls_shed: int
    busy: float  # share of the last window the event loop was at work
    tls_expected: bool  # a TLS listener is configured, so a certificate must be in use
    connections: dict[str, int]  # transport -> open
    tls_handshakes: dict[tuple[str, str], int]
    refusals: dict[tuple[str, str], int]  # (peer, reason) -> refusals
    peer_handshakes: dict[tuple[str, str], int]  # (peer, full | resumed) -> handshakes
    setup_seconds: dict[str, Histogram]  # by dial plan
    connections_evicted: int  # strangers' connections closed to admit newer ones
    udp_receive_dropped: int  # datagrams the kernel dropped: our receive queue was full
    capture_sent: int  # HEP packets sent to the collector
    capture_dropped: int  # messages not captured: queue full or collector unreachable
    tls_keylog_file: str | None  # where TLS secrets are written, while they are
    messages: dict[tuple[str, str, str, str], int]
    calls: dict[tuple[str, str, str, str], int]  # peer, dial plan, security, outcome
    targets_up: tuple[tuple[str, bool], ...]
    certificates: tuple[CertificateState, ...]
    reloads: dict[str, int]
    peer_days_left: tuple[tuple[str, float], ...] = ()  # allow-listed peers' certificates
    peers_expiring: tuple[str, ...] = ()  # within tls.peer_expiry_warning_days
    registrations: dict[str, int] = field(default_factory=dict)  # change -> count
    bindings: dict[str, int] = field(default_factory=dict)  # transport -> softphone bindings
    cluster: ClusterState | None = None  # when bindings are shared
    active_by_peer: dict[str, int] = field(default_factory=dict)  # calls in progress
    active_by_plan: dict[str, int] = field(default_factory=dict)
    limit_refusals: dict[tuple[str, str], int] = field(default_factory=dict)  # limit, name
