"""Counters the shell keeps, and the frozen snapshot of everything /healthz and /metrics
show, taken at scrape time, so the admin listener reads values and imports no server."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from sipserver.pki.certinfo import CertInfo


@dataclass
class ServerStats:
    messages: Counter[tuple[str, str, str, str]] = field(
        default_factory=Counter
    )  # direction, transport, kind, label
    tls_handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # result, reason
    reloads: Counter[str] = field(default_factory=Counter)  # ok | failed

    def count_message(self, direction: str, transport: str, data: bytes) -> None:
        if data.startswith(b"SIP/2.0 "):
            self.messages[
                (direction, transport, "response", data[8:11].decode("ascii", "replace"))
            ] += 1
        elif data.strip(b"\r\n"):
            method = data.split(b" ", 1)[0][:20].decode("ascii", "replace")
            self.messages[(direction, transport, "request", method)] += 1


@dataclass(frozen=True, slots=True)
class CertificateState:
    role: str  # server | trust_anchor
    info: CertInfo


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    taken_at: dt.datetime
    listeners: tuple[str, ...]
    draining: bool
    tls_expected: bool  # a TLS listener is configured, so a certificate must be in use
    connections: dict[str, int]  # transport -> open
    tls_handshakes: dict[tuple[str, str], int]
    messages: dict[tuple[str, str, str, str], int]
    calls: dict[tuple[str, str, str], int]
    targets_up: tuple[tuple[str, bool], ...]
    certificates: tuple[CertificateState, ...]
    reloads: dict[str, int]
