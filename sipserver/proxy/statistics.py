"""What the core can tell /metrics and /healthz, as values."""

from __future__ import annotations

from dataclasses import dataclass

from sipserver.proxy.calls import CallRecord
from sipserver.proxy.registrar import Registrar
from sipserver.proxy.shedding import LoadShedder


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    draining: bool
    overloaded: bool
    shed: int  # calls refused with 503 because of overload
    calls: dict[tuple[str, str, str, str], int]  # (peer, dial plan, security, outcome) -> calls
    registrations: dict[str, int]  # change (added, refreshed, ...) -> how many
    bindings: dict[str, int]  # transport -> softphone bindings now
    targets_up: tuple[tuple[str, bool], ...]  # health-checked targets
    active_by_peer: dict[str, int]  # calls in progress, for admission control
    active_by_plan: dict[str, int]
    limit_refusals: dict[tuple[str, str], int]  # (limit, peer or plan) -> calls refused

    @classmethod
    def of(
        cls,
        draining: bool,
        shedder: LoadShedder,
        record: CallRecord,
        registrar: Registrar,
        targets_up: tuple[tuple[str, bool], ...],
    ) -> CoreStatistics:
        return cls(
            draining,
            shedder.overloaded,
            shedder.shed,
            dict(record.outcomes),
            dict(registrar.changes),
            dict(registrar.count_by_transport()),
            targets_up,
            dict(record.limits.by_peer),
            dict(record.limits.by_plan),
            dict(record.limits.refused),
        )


@dataclass(frozen=True, slots=True)
class TransactionCounts:
    """What the core is holding, as counts: for tests that nothing is left behind."""

    server: int
    settled: int
    client_kinds: tuple[str, ...]  # forward | health | ... for each client transaction
    proxied_calls: int
    answered_calls: int  # by the answering target
    answering_wakeups: int
