"""Counters the shell keeps, and the frozen snapshot of everything /healthz and /metrics
show, taken at scrape time, so the admin listener reads values and imports no server."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from sipserver.pki.certinfo import CertInfo
from sipserver.sip.validate import KNOWN_METHODS


@dataclass
class ServerStats:
    messages: Counter[tuple[str, str, str, str]] = field(
        default_factory=Counter
    )  # direction, transport, kind, label
    tls_handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # result, reason
    reloads: Counter[str] = field(default_factory=Counter)  # ok | failed

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
    connections_evicted: int  # strangers' connections closed to admit newer ones
    udp_receive_dropped: int  # datagrams the kernel dropped: our receive queue was full
    capture_sent: int  # HEP packets sent to the collector
    capture_dropped: int  # messages not captured: queue full or collector unreachable
    tls_keylog_file: str | None  # where TLS secrets are written, while they are
    messages: dict[tuple[str, str, str, str], int]
    calls: dict[tuple[str, str, str], int]
    targets_up: tuple[tuple[str, bool], ...]
    certificates: tuple[CertificateState, ...]
    reloads: dict[str, int]
    peer_days_left: tuple[tuple[str, float], ...] = ()  # allow-listed peers' certificates
    peers_expiring: tuple[str, ...] = ()  # within tls.peer_expiry_warning_days
    registrations: dict[str, int] = field(default_factory=dict)  # change -> count
    bindings: dict[str, int] = field(default_factory=dict)  # transport -> softphone bindings
    cluster: ClusterState | None = None  # when bindings are shared
