"""The registrar for softphones (RFC 3261 §10.3, RFC 5626 §6): which contacts each number
has, over which flow they are reached, and until when.

A binding made over TCP or TLS belongs to that connection (the flow): calls for the number
go back over it whatever the Contact's host says, and the binding ends when the connection
does. A UDP binding is reached at the REGISTER's source address and port. Bindings live
here, in memory, on the instance that holds the flow."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

from sipserver.config.schema import Config, PeerSettings, RegistrarSettings
from sipserver.proxy.events import Event, RegistrationChanged
from sipserver.proxy.hops import OurAddress
from sipserver.proxy.live_transactions import ServerContext
from sipserver.proxy.responder import Headers, Responder
from sipserver.proxy.shared_bindings import BindingChange, SharedBinding
from sipserver.proxy.wakeups import WakeUps
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.headers import quote
from sipserver.sip.message import Request
from sipserver.sip.registration import ContactRequest, Registration, read_registration
from sipserver.sip.transaction_machine import ServerTransaction
from sipserver.sip.uri import UriError, parse_uri


@dataclass(eq=False, slots=True)
class Binding:
    number: str
    peer: str  # the softphone's name
    contact: str  # the Contact URI: the Request-URI of calls for the number
    flow: Flow  # where those calls are sent
    expires_at: float
    call_id: str
    cseq: int
    instance: str | None
    reg_id: int | None
    cert_sha256: str | None
    registered_at: float  # its last REGISTER: the oldest goes first past max_bindings
    active: bool = True
    scheduled: float | None = None  # for WakeUps

    @property
    def deadline(self) -> float | None:
        return self.expires_at if self.active else None

    def expires_in(self, now: float) -> int:
        return max(0, math.ceil(self.expires_at - now))

    def matches(self, contact: ContactRequest) -> bool:
        """RFC 5626 §6: the same instance and reg-id is the same flow of the same device;
        without them (RFC 3261 §10.3 step 7) the same Contact URI is the same binding."""
        if contact.instance is not None:
            return self.instance == contact.instance and self.reg_id == contact.reg_id
        return self.instance is None and _same_uri(self.contact, contact.uri)


def _same_uri(a: str, b: str) -> bool:
    return _uri_key(a) == _uri_key(b)


def _uri_key(uri: str) -> object:
    """What makes two Contact URIs the same binding (RFC 3261 §19.1.4, in short)."""
    try:
        parsed = parse_uri(uri)
    except UriError:
        return uri
    return (parsed.scheme, parsed.user, parsed.host.lower(), parsed.port, parsed.transport)


class Registrar:
    def __init__(self, responder: Responder, events: list[Event]) -> None:
        self.responder = responder
        self.events = events
        # The same bindings three ways: what a call, a closing connection and an in-dialog
        # request to a softphone each look for.
        self.by_number: dict[str, list[Binding]] = {}
        self._on_flow: dict[Flow, list[Binding]] = {}
        self._of_peer: dict[str, list[Binding]] = {}
        self._count = 0
        self.changes: Counter[str] = Counter()  # change -> how many, for /metrics
        self._wakeups: WakeUps[Binding] = WakeUps(lambda b: b.active, self.__len__)
        self.settings = RegistrarSettings()
        # With bindings shared between processes: what to publish or withdraw.
        self.publishing = False
        self._changes: list[BindingChange] = []

    def __len__(self) -> int:
        return self._count

    def configure(self, config: Config, us: OurAddress) -> None:
        """Bindings carry over; those of a peer that is gone, is no softphone any more, or
        lost the number are removed."""
        self.settings, self.us = config.registrar, us
        softphones = {p.name: p for p in config.peers if p.is_softphone}
        for name, bindings in list(self._of_peer.items()):
            peer = softphones.get(name)
            for binding in list(bindings):
                if peer is None:
                    self._remove(binding, "removed", "peer no longer configured as a softphone")
                elif binding.number not in peer.numbers:
                    self._remove(binding, "removed", "number no longer configured for the peer")

    # --- what calls ask ----------------------------------------------------------------
    def bindings(self, peer: PeerSettings, number: str) -> list[Binding]:
        return [b for b in self.by_number.get(number, ()) if b.peer == peer.name]

    def flow_to(self, peer: str, transport: Transport) -> Flow | None:
        """The newest flow a softphone registered over with that transport (for in-dialog
        requests to it)."""
        flows = (b for b in self._of_peer.get(peer, ()) if b.flow.transport == transport)
        newest = max(flows, key=lambda binding: binding.expires_at, default=None)
        return newest.flow if newest is not None else None

    def shared(self, now: float) -> list[SharedBinding]:
        """Every binding we hold, as other processes see it (to publish them all again)."""
        return [_shared(b, now) for bs in self._of_peer.values() for b in bs]

    def take_changes(self) -> list[BindingChange]:
        if not self._changes:
            return []
        changes, self._changes = self._changes, []
        return changes

    def count_by_transport(self) -> Counter[str]:
        return Counter(str(b.flow.transport) for bs in self._of_peer.values() for b in bs)

    # --- REGISTER ----------------------------------------------------------------------
    def register(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        context: ServerContext = tx.context
        peer = context.peer
        assert peer is not None
        try:
            registration = read_registration(request)
        except RemoteProtocolError as exc:
            return self._refuse(tx, exc.status, exc.reason, exc.reason, now, exc.headers)
        who = f"{peer.name} ({peer.fqdn})"
        if not peer.is_softphone:
            why = f"Only softphones register: peer {who} is kind {peer.kind.value}"
            return self._refuse(tx, 403, "Forbidden", why, now)
        if not self._ours(registration.domain, context.flow):
            why = f"Domain {registration.domain} is not served here (ours: {self.us.agent})"
            return self._refuse(tx, 403, "Forbidden", why, now)
        number = registration.number
        if number not in peer.numbers:
            why = (
                f"Number {number} is not one of softphone {who}'s numbers "
                f"({', '.join(peer.numbers)})"
            )
            return self._refuse(tx, 403, "Forbidden", why, now)
        outbound = registration.outbound
        if outbound and registration.via_count > 1 and any(c.reg_id for c in registration.contacts):
            why = (
                "Outbound (reg-id) needs the REGISTER straight from the softphone, not via a proxy"
            )
            return self._refuse(tx, 439, "First Hop Lacks Outbound Support", why, now)
        if len(registration.contacts) > self.settings.max_contacts:
            why = (
                f"{len(registration.contacts)} Contacts in one REGISTER, more than "
                f"registrar.max_contacts ({self.settings.max_contacts})"
            )
            return self._refuse(tx, 400, "Bad Request", why, now)
        wanted = [self._expiry(contact, registration) for contact in registration.contacts]
        shortest = self.settings.min_expires
        if any(0 < seconds < shortest for seconds in wanted):
            too_short = min(s for s in wanted if s > 0)
            why = f"Expiry {too_short} s is below registrar.min_expires ({shortest} s)"
            headers = (("Min-Expires", str(shortest)),)
            return self._refuse(tx, 423, "Interval Too Brief", why, now, headers)
        wanted = [min(seconds, self.settings.max_expires) for seconds in wanted]
        mine = self.bindings(peer, number)
        if registration.wildcard:
            for binding in mine:
                self._remove(binding, "removed", "unregistered (Contact: *)")
        changes: list[tuple[ContactRequest, int, Binding | None]] = []
        for contact, expires in _last_of_each(registration.contacts, wanted, outbound):
            existing = next((b for b in mine if b.active and b.matches(contact)), None)
            if (
                existing is not None
                and existing.call_id == request.call_id
                and request.cseq[0] <= existing.cseq
            ):
                why = "CSeq not higher than the binding's last REGISTER (RFC 3261 §10.3)"
                return self._refuse(tx, 500, "Server Internal Error", why, now)
            changes.append((contact, expires, existing))
        kept = sum(1 for _, expires, _ in changes if expires > 0)
        if kept > self.settings.max_bindings:
            why = (
                f"{kept} Contacts for {number} in one REGISTER, more than "
                f"registrar.max_bindings ({self.settings.max_bindings})"
            )
            return self._refuse(tx, 403, "Forbidden", why, now)
        for contact, expires, existing in changes:
            self._apply(context, request, number, contact, expires, existing, now)
        self._evict_oldest(number, now)
        used_outbound = outbound and any(c.reg_id for c in registration.contacts)
        return self._accept(tx, number, used_outbound, now)

    def _ours(self, domain: str, flow: Flow) -> bool:
        domain = domain.lower().strip("[]")
        return domain in self.us.names or domain == flow.local[0]

    def _expiry(self, contact: ContactRequest, registration: Registration) -> int:
        """The seconds asked for: the Contact's expires, else the Expires header, else our
        default (RFC 3261 §10.3 step 7)."""
        asked = contact.expires if contact.expires is not None else registration.expires
        return self.settings.default_expires if asked is None else asked

    def _apply(
        self,
        context: ServerContext,
        request: Request,
        number: str,
        contact: ContactRequest,
        expires: int,
        existing: Binding | None,
        now: float,
    ) -> None:
        if expires == 0:
            if existing is not None:
                self._remove(existing, "removed", "unregistered (expires 0)")
            return
        if existing is None:
            peer = context.peer
            assert peer is not None
            binding = Binding(
                number=number,
                peer=peer.name,
                contact=contact.uri,
                flow=context.flow,
                expires_at=now + expires,
                call_id=request.call_id or "",
                cseq=request.cseq[0],
                instance=contact.instance,
                reg_id=contact.reg_id,
                cert_sha256=context.peer_cert.thumbprint_sha256 if context.peer_cert else None,
                registered_at=now,
            )
            _link(self.by_number, number, binding)
            _link(self._on_flow, binding.flow, binding)
            _link(self._of_peer, binding.peer, binding)
            self._count += 1
            self._note(binding, "added", now)
        else:
            binding = existing
            change = "refreshed" if binding.flow == context.flow else "replaced"
            if change == "replaced":
                _unlink(self._on_flow, binding.flow, binding)
                binding.flow = context.flow
                _link(self._on_flow, binding.flow, binding)
            binding.contact, binding.expires_at = contact.uri, now + expires
            binding.call_id, binding.cseq = request.call_id or "", request.cseq[0]
            binding.registered_at = now
            if context.peer_cert is not None:
                binding.cert_sha256 = context.peer_cert.thumbprint_sha256
            self._note(binding, change, now)
        self._wakeups.schedule(binding)

    def _evict_oldest(self, number: str, now: float) -> None:
        """Past max_bindings the bindings registered longest ago go: never one this
        REGISTER has just confirmed, however short its expiry (the phone was told 200)."""
        bindings = self.by_number.get(number, [])
        while len(bindings) > self.settings.max_bindings:
            oldest = min(bindings, key=lambda b: b.registered_at)
            if oldest.registered_at >= now:
                break  # every one is this REGISTER's: max_contacts bounds them
            why = f"more than registrar.max_bindings ({self.settings.max_bindings}) for the number"
            self._remove(oldest, "removed", why)

    def _accept(
        self, tx: ServerTransaction, number: str, outbound: bool, now: float
    ) -> list[Transmit]:
        headers: list[tuple[str, str]] = []
        for binding in self.by_number.get(number, ()):
            params = f";expires={binding.expires_in(now)}"
            if binding.instance is not None:
                params += f";+sip.instance={quote(binding.instance)}"
            if binding.reg_id is not None:
                params += f";reg-id={binding.reg_id}"
            headers.append(("Contact", f"<{binding.contact}>{params}"))
        if outbound:
            # §6: the registrar says it applied outbound, and how often keep-alives must come.
            headers += [("Require", "outbound"), ("Flow-Timer", str(self.settings.flow_timer))]
        return self.responder.answer(tx, 200, "OK", now, headers=tuple(headers))

    def _refuse(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        why: str,
        now: float,
        headers: Headers = (),
    ) -> list[Transmit]:
        return self.responder.answer(
            tx,
            status,
            reason,
            now,
            headers=(self.responder.warning(why), *headers),
            log_reason=why,
        )

    # --- bindings ending ---------------------------------------------------------------
    def flow_closed(self, flow: Flow, reason: str) -> None:
        """The connection ended: its bindings end with it (RFC 5626 §5.2), so a call for
        the number is answered 480 at once rather than waiting for a dead flow."""
        for binding in list(self._on_flow.get(flow, ())):
            self._remove(binding, "removed", f"connection closed: {reason}")

    def next_deadline(self) -> float | None:
        return self._wakeups.next_deadline()

    def due(self, now: float) -> None:
        for binding in self._wakeups.due(now):
            self._remove(binding, "expired", "not refreshed in time")

    def _remove(self, binding: Binding, change: str, reason: str) -> None:
        if not binding.active:
            return
        binding.active = False
        _unlink(self.by_number, binding.number, binding)
        _unlink(self._on_flow, binding.flow, binding)
        _unlink(self._of_peer, binding.peer, binding)
        self._count -= 1
        self._note(binding, change, None, reason)

    def _note(
        self, binding: Binding, change: str, now: float | None, reason: str | None = None
    ) -> None:
        self.changes[change] += 1
        if self.publishing:
            withdraw = change in ("removed", "expired")
            shared = _shared(binding, binding.expires_at if now is None else now)
            self._changes.append(BindingChange(withdraw, shared))
        self.events.append(
            RegistrationChanged(
                change=change,
                reason=reason,
                peer=binding.peer,
                number=binding.number,
                contact=binding.contact,
                transport=binding.flow.transport,
                remote=binding.flow.remote_text,
                expires=binding.expires_in(now) if now is not None else None,
                instance=binding.instance,
                reg_id=binding.reg_id,
                peer_cert_thumbprint_sha256=binding.cert_sha256,
                call_id=binding.call_id,
            )
        )


def _last_of_each(
    contacts: tuple[ContactRequest, ...], wanted: list[int], outbound: bool
) -> list[tuple[ContactRequest, int]]:
    """The contacts in order, a repeated one (same URI, or same instance and reg-id) once,
    with its last expiry: RFC 3261 §10.3 step 7 applies them one after another."""
    kept: dict[object, tuple[ContactRequest, int]] = {}
    for contact, expires in zip(contacts, wanted, strict=True):
        if not outbound and contact.reg_id is not None:
            # RFC 5626 §6: without Supported: outbound, reg-id means nothing to us.
            contact = ContactRequest(contact.uri, contact.expires, contact.instance, None)
        key: object = (
            (contact.instance, contact.reg_id)
            if contact.instance is not None
            else _uri_key(contact.uri)
        )
        kept.pop(key, None)
        kept[key] = (contact, expires)
    return list(kept.values())


def _shared(binding: Binding, now: float) -> SharedBinding:
    same = f"{binding.instance}|{binding.reg_id}" if binding.instance else binding.contact
    return SharedBinding(
        number=binding.number,
        peer=binding.peer,
        contact=binding.contact,
        transport=binding.flow.transport,
        key=f"{binding.peer}|{same}",
        connection_id=binding.flow.connection_id,
        expires_in=max(0.0, binding.expires_at - now),
    )


K = TypeVar("K")


def _link(index: dict[K, list[Binding]], key: K, binding: Binding) -> None:
    index.setdefault(key, []).append(binding)


def _unlink(index: dict[K, list[Binding]], key: K, binding: Binding) -> None:
    entries = index.get(key)
    if entries is not None and binding in entries:
        entries.remove(binding)
        if not entries:
            del index[key]
