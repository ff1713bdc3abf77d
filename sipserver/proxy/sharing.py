"""What the shell asks of, and tells, a core whose bindings are shared with our other
processes: the numbers calls wait on, the answers, and our own bindings to publish."""

from __future__ import annotations

from collections.abc import Sequence

from sipserver.proxy.forwarder import Forwarder
from sipserver.proxy.registrar import Registrar
from sipserver.proxy.shared_bindings import BindingChange, BindingsFound, SharedBinding
from sipserver.sip.flow import Transmit


class BindingSharing:
    def __init__(self, forwarder: Forwarder, registrar: Registrar) -> None:
        self._forwarder = forwarder
        self._registrar = registrar

    def take_queries(self) -> Sequence[str]:
        """The numbers whose other processes' bindings calls wait for."""
        return self._forwarder.queries.take()

    def found(self, number: str, found: BindingsFound, now: float) -> list[Transmit]:
        """The store's answer for `number`: the calls that waited for it go on."""
        out: list[Transmit] = []
        for call in self._forwarder.queries.answered(number):
            out += self._forwarder.bindings_found(call, found, now)
        return out

    def take_changes(self) -> list[BindingChange]:
        """Our bindings to publish or withdraw since the last call."""
        return self._registrar.take_changes()

    def ours(self, now: float) -> list[SharedBinding]:
        """Every binding we hold (to publish them all again, e.g. to a store that was lost)."""
        return self._registrar.shared(now)
