"""Bindings that other processes hold: with `workers = N` (or several instances) a softphone's
flow lives in one process, but a call for its number may arrive at any. Each process
publishes its own bindings, and a call for a softphone asks where the number's other
flows are, as a target known by its FQDN asks DNS: the core asks for a `BindingQuery` and
goes on; the shell asks the shared store (bounded in time) and hands back what it found,
which resumes the calls that waited. A binding held elsewhere is reached through the process
that holds it (the sibling hop): only that process may write to the flow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sipserver.config.choices import PeerKind
from sipserver.config.schema import SIBLING_NAME, PeerSettings
from sipserver.sip.flow import Transport

W = TypeVar("W")  # what waits for a query (a call)


def sibling_peer(fqdn: str) -> PeerSettings:
    """Our own processes, as a peer: they prove `server.fqdn` with a certificate that
    chains to our trust anchors (or is our own)."""
    return PeerSettings(name=SIBLING_NAME, fqdn=fqdn, kind=PeerKind.PBX, health_check=0.0)


@dataclass(frozen=True, slots=True)
class SharedBinding:
    """One binding as other processes see it."""

    number: str
    peer: str  # the softphone's name
    contact: str
    transport: Transport
    key: str  # the same binding across refreshes (its instance/reg-id, else its Contact)
    connection_id: int | None  # the flow, in the owner's connection table (None for UDP)
    expires_in: float  # seconds from when it was published or read


@dataclass(frozen=True, slots=True)
class RemoteBinding:
    """A binding that another process holds, and how to reach that process."""

    binding: SharedBinding
    owner: str  # the process that holds the flow
    hop: tuple[str, int]  # its own TLS address, for the sibling hop


@dataclass(frozen=True, slots=True)
class BindingsFound:
    """What a query found: other processes' bindings for the number, or why none."""

    remote: tuple[RemoteBinding, ...]
    error: str | None = None  # the store could not be asked: local bindings only


@dataclass(frozen=True, slots=True)
class BindingChange:
    """A binding of ours to publish (`binding` with its expiry) or withdraw."""

    withdraw: bool
    binding: SharedBinding


class BindingQueries(Generic[W]):
    """The queries the core asked for, and who waits for each answer. Answers are not
    kept: a binding may move to another process at any moment."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[W]] = {}
        self._asked: list[str] = []

    def wait(self, number: str, waiter: W) -> None:
        if number not in self._waiting:
            self._waiting[number] = []
            self._asked.append(number)
        self._waiting[number].append(waiter)

    def take(self) -> Sequence[str]:
        if not self._asked:
            return ()
        asked, self._asked = self._asked, []
        return asked

    def answered(self, number: str) -> list[W]:
        return self._waiting.pop(number, [])

    def pending(self) -> int:
        return sum(len(waiters) for waiters in self._waiting.values())


@dataclass(frozen=True, slots=True)
class Sharing:
    """This process among the others that share bindings: its name in the store, our
    processes as a peer, and the address its sibling-hop leg has in our Record-Route."""

    owner: str
    sibling: PeerSettings
    hop_host: str
