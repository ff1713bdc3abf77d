"""The server's SIP behaviour as a pure state machine: bytes and time in; bytes to send,
events that happened and when to wake it out.

The transport feeds it datagrams and framed stream messages with the flow they arrived on
and the current time; it answers with `Transmit`s, keeps `Event`s for `take_events()`,
and says when it next needs `handle_timers` (`next_deadline`). Nothing here touches a
socket, reads a clock or logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from sipserver.config.schema import SIBLING_NAME, Config, DialPlanSettings, PeerSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.admission import CallLimits, LimitReached
from sipserver.proxy.answer_target import AnsweringTarget, repeatable_bytes
from sipserver.proxy.calls import CallRecord
from sipserver.proxy.connection_directory import ConnectionDirectory, NoConnections
from sipserver.proxy.dialogs import DialogRouter
from sipserver.proxy.events import (
    CallRedirected,
    CallRefused,
    Event,
    ResponseUnmatched,
)
from sipserver.proxy.forwarder import Forwarder
from sipserver.proxy.hops import OurAddress
from sipserver.proxy.intake import Intake, response_flow, stamp_via
from sipserver.proxy.live_transactions import ServerContext, TransactionTable
from sipserver.proxy.locations import Located, Lookup
from sipserver.proxy.pinger import HealthChecker
from sipserver.proxy.registrar import Registrar
from sipserver.proxy.responder import Responder
from sipserver.proxy.shared_bindings import Sharing, sibling_peer
from sipserver.proxy.sharing import BindingSharing
from sipserver.proxy.shedding import LoadShedder
from sipserver.proxy.statistics import CoreStatistics
from sipserver.routing import router
from sipserver.routing.peers import PeerTable
from sipserver.routing.target_health import HealthTable
from sipserver.sip import proxy_ops, validate
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.framing import FramingError
from sipserver.sip.matching import server_key
from sipserver.sip.message import Message, ParseError, ParseLimits, Request, Response, parse_message
from sipserver.sip.stateless import acks_a_refusal
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    RequestReceived,
    ServerTransaction,
    State,
)

ALLOW = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE, "
    "REGISTER"
)
ACCEPT = "application/sdp"
SUPPORTED_OPTIONS: frozenset[str] = frozenset()  # option tags we honour in Require/Proxy-Require
# What OPTIONS says we support: those, and outbound (RFC 5626) for registering softphones.
SUPPORTED = ", ".join(sorted(SUPPORTED_OPTIONS | {"outbound"}))


class SipCore:
    def __init__(
        self,
        config: Config,
        timers: TimerValues | None = None,
        connections: ConnectionDirectory | None = None,
        entropy: Callable[[int], bytes] | None = None,
    ) -> None:
        """`entropy(n)` gives n random bytes (the shell passes os.urandom); the default is
        repeatable, for tests."""
        self._fixed_timers = timers
        self._bound_ports: tuple[int, int] | None = None
        self._events: list[Event] = []
        self.table = TransactionTable()
        self.record = CallRecord()
        self.us = OurAddress.of(config)
        self.responder = Responder(self.table, self._events, self.us.agent)
        directory = connections or NoConnections()
        self.registrar = Registrar(self.responder, self._events)
        self.forwarder = Forwarder(
            self.table, self.responder, self.record, self._events, directory, self.registrar
        )
        self.health_checks = HealthChecker(
            self.table, self._events, directory, self.forwarder.picker.locations
        )
        self.intake = Intake(self.responder, self._events)
        self.dialogs = DialogRouter(self.responder, self.forwarder)
        self.answering = AnsweringTarget(
            self.table, self.responder, self.record, self._events, entropy or repeatable_bytes()
        )
        self.draining = False
        self.shedder = LoadShedder(self.responder, self.record)
        self.sharing: Sharing | None = None
        self.configure(config)

    # --- the shell's controls -----------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Swap in a new configuration; transactions in flight carry on."""
        self.config = config
        sharing = self.sharing
        if sharing is not None and sharing.sibling.fqdn != config.server.fqdn:
            sharing = replace(sharing, sibling=sibling_peer(config.server.fqdn))
            self.sharing = self.forwarder.sharing = sharing
        self.peers = PeerTable(config.peers + ((sharing.sibling,) if sharing else ()))
        self.limits = ParseLimits(
            config.limits.max_message_bytes,
            config.limits.max_header_count,
            config.limits.max_line_bytes,
        )
        self.us = OurAddress.of(config)
        if self._bound_ports is not None:
            self.us = self.us.with_ports(*self._bound_ports)
        if sharing is not None:
            self.us = self.us.also_named(sharing.hop_host)
        self.timers = self._fixed_timers or config.timers
        self.responder.agent = self.us.agent
        self.responder.server_header = config.server.user_agent or None
        self.intake.configure(config, self.limits)
        self.dialogs.configure(self.peers, self.us)
        self.health_checks.configure(config, self.us, self.timers)
        self.forwarder.configure(config, self.us, self.timers, self.health_checks.health)
        self.answering.configure(self.us, self.timers)
        self.registrar.configure(config, self.us)

    def set_ports(self, sip_port: int, tls_port: int) -> None:
        """The ports actually bound (config may say 0), for our Via and Record-Route."""
        self._bound_ports = (sip_port, tls_port)
        self.configure(self.config)

    def share_bindings(self, owner: str, hop_host: str) -> BindingSharing:
        """From now on bindings are shared with our other processes: `owner` names this one
        in the store, `hop_host` is where they reach its own TLS port. The shell asks and
        answers through what this returns."""
        sibling = sibling_peer(self.config.server.fqdn)
        self.sharing = self.forwarder.sharing = Sharing(owner, sibling, hop_host)
        self.registrar.publishing = True
        self.configure(self.config)
        return BindingSharing(self.forwarder, self.registrar)

    @property
    def call_limits(self) -> CallLimits:
        """The calls in progress that admission counts: the shell shares their counts with
        our other processes (`counts()`, `counted_elsewhere()`)."""
        return self.record.limits

    def set_overloaded(self, overloaded: bool, shed_ratio: float = 1.0) -> None:
        """While overloaded, refuse `shed_ratio` of new calls (spread evenly) with 503."""
        self.shedder.set(overloaded, shed_ratio)

    def set_backlogged(self, backlogged: bool) -> None:
        """Whether the messages handled next have a backlog waiting behind them: while
        overloaded, new calls are then all refused (not only the share)."""
        self.shedder.surge = backlogged and self.shedder.overloaded

    @property
    def overloaded(self) -> bool:
        return self.shedder.overloaded

    @property
    def shed(self) -> int:
        return self.shedder.shed

    def start_drain(self) -> None:
        """From now on new calls get 503 + Retry-After; calls in flight finish."""
        self.draining = True

    def use_certificate(self, info: CertInfo) -> None:
        """Our certificate in use, named in the call line of every call that uses TLS."""
        self.forwarder.our_thumbprint_sha1 = info.thumbprint_sha1
        self.answering.our_thumbprint_sha1 = info.thumbprint_sha1

    def take_events(self) -> list[Event]:
        """What happened since the last call, oldest first (the shell logs them)."""
        if not self._events:
            return []
        events = self._events[:]
        self._events.clear()
        return events

    def statistics(self) -> CoreStatistics:
        targets = tuple((p.name, self.health.is_up(p)) for p in self.health_checks.targets)
        return CoreStatistics.of(self.draining, self.shedder, self.record, self.registrar, targets)

    # --- DNS (RFC 3263): the shell runs the lookups the core asks for -------------------
    def take_lookups(self) -> Sequence[Lookup]:
        return self.forwarder.picker.locations.take_lookups()

    def located(self, lookup: Lookup, located: Located, now: float) -> list[Transmit]:
        """A lookup is answered: the calls that waited for it go on."""
        out: list[Transmit] = []
        for call in self.forwarder.picker.locations.resolved(lookup, located, now):
            out += self.forwarder.resume(call, now)
        return out

    @property
    def health(self) -> HealthTable:
        return self.health_checks.health

    # --- inputs -------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, flow: Flow, now: float) -> list[Transmit]:
        if not data.strip(b"\r\n\x00 "):
            return []  # keep-alive datagrams carry no message
        return self._receive(data, flow, self.peers.by_address(flow.remote[0]), now, stream=False)

    def receive_stream_message(
        self,
        data: bytes,
        flow: Flow,
        tls_peer: PeerSettings | None,
        now: float,
        peer_cert: CertInfo | None = None,
    ) -> list[Transmit]:
        """One framed message from TCP or TLS. On TLS `tls_peer` is the verified peer (and
        `peer_cert` its certificate); on TCP the peer is known by its address."""
        peer = (
            tls_peer if flow.transport == Transport.TLS else self.peers.by_address(flow.remote[0])
        )
        if self.shedder.overloaded and peer is not None:
            retry_after = self.config.limits.overload_retry_after
            refused = self.shedder.refuse_at_door(data, flow, peer, retry_after)
            if refused is not None:
                return refused
        if data.startswith(b"ACK ") and acks_a_refusal(data):
            return []  # the ACK of a refusal at the door: no transaction waits for it
        return self._receive(data, flow, peer, now, stream=True, cert=peer_cert)

    def transport_failed(self, flow: Flow, reason: str, now: float) -> list[Transmit]:
        """The transport could not deliver on `flow` (refused, TLS failed, closed)."""
        self.health_checks.transport_failed(flow, reason)
        self.registrar.flow_closed(flow, reason)
        return self.forwarder.transport_failed(flow, reason, now)

    def framing_lost(self, error: FramingError, flow: Flow) -> list[Transmit]:
        """The stream cannot be framed any more: answer the offending request if we can
        read it, then close the connection."""
        return self.intake.framing_lost(error, flow)

    def busy(self) -> int:
        """What a drain waits for: transactions without their final response, and answered
        calls whose BYE has not passed yet."""
        calls = self.forwarder.busy() + self.answering.busy() + len(self.record.open_dialogs)
        return self.table.pending_server() + calls

    # --- time ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadlines = (
            self.table.next_deadline(),
            self.health_checks.next_deadline(),
            self.answering.next_deadline(),
            self.registrar.next_deadline(),
        )
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timers(self, now: float) -> list[Transmit]:
        self.table.forget_settled(now)
        self.registrar.due(now)
        out: list[Transmit] = []
        for tx in self.table.due(now):
            if isinstance(tx, ServerTransaction):
                out += self.responder.drive(tx, tx.handle_timer(now))
            elif isinstance(tx, ClientTransaction) and tx.context.kind == "health":
                out += self.health_checks.drive(tx, tx.handle_timer(now))
            elif isinstance(tx, ClientTransaction):
                out += self.forwarder.drive(tx, tx.handle_timer(now), now)
        return out + self.health_checks.due(now) + self.answering.due(now)

    @property
    def transaction_count(self) -> int:
        return len(self.table.server) + len(self.table.settled)

    # --- the pipeline -----------------------------------------------------------------
    def _receive(
        self,
        data: bytes,
        flow: Flow,
        peer: PeerSettings | None,
        now: float,
        *,
        stream: bool,
        cert: CertInfo | None = None,
    ) -> list[Transmit]:
        try:
            message: Message = parse_message(data, self.limits, stream=stream)
        except ParseError as exc:
            return self.intake.malformed(exc, exc.partial, flow, peer)
        if isinstance(message, Response):
            return self._response_received(message, flow, now)
        assert isinstance(message, Request)
        try:
            validate.check_envelope(message)
        except RemoteProtocolError as exc:
            return self.intake.malformed(exc, message, flow, peer)
        return self._request_received(message, flow, peer, now, cert)

    def _request_received(
        self,
        request: Request,
        flow: Flow,
        peer: PeerSettings | None,
        now: float,
        cert: CertInfo | None = None,
    ) -> list[Transmit]:
        via = stamp_via(request, flow)
        key = server_key(request, via)
        reply_to = response_flow(via, flow)
        existing = self.table.server.get(key)
        if existing is None and (settled := self.table.settled.get(key)) is not None:
            return [Transmit(settled.reply_to, settled.data)]  # a retransmission (Timer J)
        if existing is not None:
            outputs = existing.receive_request(request, now)
            out = self.responder.drive(existing, outputs)
            for item in outputs:
                if isinstance(item, RequestReceived):  # an ACK for a 2xx that reused the branch
                    out += self.dialogs.ack(item.request)
            return out
        if peer is None:
            if request.method == "ACK":
                return []
            return self.intake.unknown_source(request, flow, reply_to)
        if request.method == "ACK":
            answered = self.answering.dialog_of(request)
            if answered is not None:
                self.answering.ack(answered)
                return []
            return self.dialogs.ack(request)
        context = ServerContext(
            key, flow, reply_to, peer, request.method, request.call_id, request, cert
        )
        tx = ServerTransaction.create(
            request.method, reliable=flow.reliable, now=now, timers=self.timers, context=context
        )
        try:
            validate.check_request_line(request)
            validate.check_method(request)
        except RemoteProtocolError as exc:
            return self._refuse(tx, exc, now)
        if request.method == "CANCEL":
            return self._cancel(tx, request, now)
        to = request.to
        in_dialog = to is not None and bool(to.tag)
        if self.shedder.sheds(request.method, in_dialog):
            return self.shedder.refuse(tx, self.config.limits.overload_retry_after, now)
        if self.draining and not in_dialog:
            retry = self.config.routing.retry_after
            return self.responder.unavailable(tx, "Server is shutting down", retry, now)
        self.table.server[key] = tx
        if request.method == "OPTIONS" and self.us.pinged(request, flow):
            return self._options(tx, request, now)
        if self._from_sibling(peer):
            if not in_dialog:
                return self._handed_over(tx, request, now)
        elif proxy_ops.is_loop(request, self.us.host):
            why = "our Via is already in the request"
            return self.responder.answer(tx, 482, "Loop Detected", now, log_reason=why)
        if request.method == "REGISTER":
            return self.registrar.register(tx, request, now)
        if in_dialog:
            answered = self.answering.dialog_of(request)
            if answered is not None:
                return self.answering.request(tx, request, answered, now)
            return self.dialogs.request(tx, request, now)
        return self._route(tx, request, now)

    def _refuse(
        self, tx: ServerTransaction, exc: RemoteProtocolError, now: float
    ) -> list[Transmit]:
        return self.responder.answer(
            tx, exc.status, exc.reason, now, headers=exc.headers, log_reason=exc.reason
        )

    # --- answers -----------------------------------------------------------------------
    def _options(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        try:
            validate.check_required_options(request, "Require", SUPPORTED_OPTIONS)
        except RemoteProtocolError as exc:
            return self._refuse(tx, exc, now)
        headers = (
            ("Allow", ALLOW),
            ("Accept", ACCEPT),
            ("Supported", SUPPORTED),
        )
        return self.responder.answer(tx, 200, "OK", now, headers=headers)

    def _from_sibling(self, peer: PeerSettings) -> bool:
        return self.sharing is not None and peer is self.sharing.sibling

    def _handed_over(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        """A call another process of ours routed to a softphone whose flow we hold: route it
        as if its caller (named on the Route) had called us, and ring our own flows only.
        (Our processes never loop: what a sibling hands over is never handed on.)"""
        request, hop, ours = proxy_ops.pop_our_routes(request, self.us.is_ours)
        caller = self.peers.by_name(hop.peer) if hop is not None and hop.peer else None
        if not ours or caller is None or caller.name == SIBLING_NAME:
            why = "a request from another sipserver process that names no caller on our Route"
            return self.responder.answer(tx, 403, "Forbidden", now, log_reason=why)
        tx.context.request = request
        return self._route(tx, request, now, caller=caller)

    def _over_limit(
        self,
        tx: ServerTransaction,
        plan: DialPlanSettings,
        reached: LimitReached,
        peer: PeerSettings,
        now: float,
    ) -> list[Transmit]:
        """503 + Retry-After, not 486: the callee is not busy, this route is full, and a
        gateway fails over to its next route on a 503 (RFC 3261 §21.5.4) but gives the
        caller a busy tone on a 486."""
        self.record.count(plan, "refused_503", peer)
        retry = str(self.config.routing.retry_after)
        return self.responder.answer(
            tx,
            503,
            "Service Unavailable",
            now,
            headers=(self.responder.warning(reached.warning), ("Retry-After", retry)),
            log_reason=reached.warning,
            event=CallRefused,
            refusal="call_limit_reached",
            dial_plan=plan.name,
            security=plan.security,
        )

    def _route(
        self,
        tx: ServerTransaction,
        request: Request,
        now: float,
        caller: PeerSettings | None = None,
    ) -> list[Transmit]:
        """`caller`: who called, when a sibling handed the call over (else the peer)."""
        peer = caller or tx.context.peer
        if validate.max_forwards(request) == 0:
            return self.responder.answer(
                tx, 483, "Too Many Hops", now, log_reason="Max-Forwards is 0"
            )
        try:
            validate.check_required_options(request, "Proxy-Require", SUPPORTED_OPTIONS)
        except RemoteProtocolError as exc:
            return self._refuse(tx, exc, now)
        assert peer is not None
        decision = router.route(
            self.config, request, peer, tx.context.flow.transport, self.health.is_up
        )
        if isinstance(decision, router.Reject):
            self.record.count(decision.plan, f"refused_{decision.status}", peer)
            return self.responder.answer(
                tx,
                decision.status,
                decision.reason,
                now,
                headers=(self.responder.warning(decision.warning), *decision.headers),
                log_reason=decision.warning,
                event=CallRefused,
                refusal=decision.log_event,
                dial_plan=decision.plan.name if decision.plan else None,
                security=decision.plan.security if decision.plan else None,
            )
        if (
            isinstance(decision, (router.Proxy, router.Answer))
            and request.method == "INVITE"
            and caller is None  # a call a sibling handed over was admitted where it entered
        ):
            reached = self.record.limits.admit(
                self.config, peer, decision.plan, request.call_id or "", now
            )
            if reached is not None:
                return self._over_limit(tx, decision.plan, reached, peer, now)
        if isinstance(decision, router.Proxy):
            return self.forwarder.start_call(
                tx,
                request,
                decision.plan,
                decision.targets,
                now,
                number=decision.number,
                handed_over=caller is not None,
            )
        if isinstance(decision, router.Answer):
            return self.answering.start(tx, request, decision.plan, decision.number, now)
        self.record.count(decision.plan, "redirected", peer)
        return self.responder.answer(
            tx,
            302,
            "Moved Temporarily",
            now,
            headers=(("Contact", decision.contact),),
            event=CallRedirected,
            dial_plan=decision.plan.name,
            security=decision.plan.security,
            target=decision.target.name,
            target_fqdn=decision.target.fqdn,
            contact=decision.contact,
        )

    def _cancel(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        invite_key = server_key(replace(request, method="INVITE"))
        invite = self.table.server.get(invite_key)
        self.table.server[tx.context.key] = tx
        downstream = self.forwarder.cancel(invite_key, now)
        if downstream is not None:
            # §16.10: answer the CANCEL, cancel the branch downstream; the 487 comes back from it.
            return self.responder.answer(tx, 200, "OK", now) + downstream
        if invite is None or invite.state is not State.PROCEEDING:
            why = "CANCEL matches no pending INVITE"
            return self.responder.answer(
                tx, 481, "Call/Transaction Does Not Exist", now, log_reason=why
            )
        self.answering.cancelled(invite_key, now)
        out = self.responder.answer(tx, 200, "OK", now)
        return out + self.responder.answer(
            invite, 487, "Request Terminated", now, log_reason="cancelled"
        )

    def _response_received(self, response: Response, flow: Flow, now: float) -> list[Transmit]:
        tx = self.table.client_for(response)
        if tx is not None and tx.context.kind == "health":
            return self.health_checks.drive(tx, tx.receive_response(response, now))
        handled = self.forwarder.response_received(response, now)
        if handled is not None:
            return handled
        self._events.append(
            ResponseUnmatched(
                call_id=response.call_id,
                status=response.status,
                transport=flow.transport,
                remote=flow.remote_text,
            )
        )
        return []
