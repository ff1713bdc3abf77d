"""The server's SIP behaviour as a pure state machine: bytes and time in; bytes to send,
events that happened and when to wake it out.

The transport feeds it datagrams and framed stream messages with the flow they arrived on
and the current time; it answers with `Transmit`s, keeps `Event`s for `take_events()`,
and says when it next needs `handle_timers` (`next_deadline`). Nothing here touches a
socket, reads a clock or logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Final

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
from sipserver.proxy.registrar import Binding, Registrar
from sipserver.proxy.responder import Responder
from sipserver.proxy.shared_bindings import Sharing, sibling_peer
from sipserver.proxy.sharing import BindingSharing
from sipserver.proxy.shedding import LoadShedder
from sipserver.proxy.statistics import CoreStatistics, TransactionCounts
from sipserver.routing import router
from sipserver.routing.peers import PeerTable
from sipserver.routing.target_health import HealthTable
from sipserver.sip import proxy_ops, validate
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import TLS, Flow, Transmit
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

ALLOW: Final = (
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE, "
    "REGISTER"
)
ACCEPT: Final = "application/sdp"
# Option tags we honour in Require/Proxy-Require.
SUPPORTED_OPTIONS: Final[frozenset[str]] = frozenset()
# What OPTIONS says we support: those, and outbound (RFC 5626) for registering softphones.
SUPPORTED: Final = ", ".join(sorted(SUPPORTED_OPTIONS | {"outbound"}))


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
        self._table = TransactionTable()
        self._record = CallRecord()
        self._us = OurAddress.of(config)
        self._responder = Responder(self._table, self._events, self._us.agent)
        directory = connections or NoConnections()
        self._registrar = Registrar(self._responder, self._events)
        self._forwarder = Forwarder(
            self._table, self._responder, self._record, self._events, directory, self._registrar
        )
        self._health_checks = HealthChecker(
            self._table, self._events, directory, self._forwarder.picker.locations
        )
        self._intake = Intake(self._responder, self._events)
        self._dialogs = DialogRouter(self._responder, self._forwarder)
        self._answering = AnsweringTarget(
            self._table, self._responder, self._record, self._events, entropy or repeatable_bytes()
        )
        self.draining = False
        self._shedder = LoadShedder(self._responder, self._record)
        self._sharing: Sharing | None = None
        self.configure(config)

    # --- the shell's controls -----------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Swap in a new configuration; transactions in flight carry on."""
        self.config = config
        sharing = self._sharing
        if sharing is not None and sharing.sibling.fqdn != config.server.fqdn:
            sharing = replace(sharing, sibling=sibling_peer(config.server.fqdn))
            self._sharing = self._forwarder.sharing = sharing
        self.peers = PeerTable(config.peers + ((sharing.sibling,) if sharing else ()))
        self.limits = ParseLimits(
            config.limits.max_message_bytes,
            config.limits.max_header_count,
            config.limits.max_line_bytes,
        )
        self._us = OurAddress.of(config)
        if self._bound_ports is not None:
            self._us = self._us.with_ports(*self._bound_ports)
        if sharing is not None:
            self._us = self._us.also_named(sharing.hop_host)
        self._timers = self._fixed_timers or config.timers
        self._responder.agent = self._us.agent
        self._responder.server_header = config.server.user_agent or None
        self._intake.configure(config, self.limits)
        self._dialogs.configure(self.peers, self._us)
        self._health_checks.configure(config, self._us, self._timers)
        self._forwarder.configure(config, self._us, self._timers, self._health_checks.health)
        self._answering.configure(self._us, self._timers)
        self._registrar.configure(config, self._us)

    def set_ports(self, sip_port: int, tls_port: int) -> None:
        """The ports actually bound (config may say 0), for our Via and Record-Route."""
        self._bound_ports = (sip_port, tls_port)
        self.configure(self.config)

    def share_bindings(self, owner: str, hop_host: str) -> BindingSharing:
        """From now on bindings are shared with our other processes: `owner` names this one
        in the store, `hop_host` is where they reach its own TLS port. The shell asks and
        answers through what this returns."""
        sibling = sibling_peer(self.config.server.fqdn)
        self._sharing = self._forwarder.sharing = Sharing(owner, sibling, hop_host)
        self._registrar.publishing = True
        self.configure(self.config)
        return BindingSharing(self._forwarder, self._registrar)

    # --- read-only views: what the core holds, for the shell's pages and for tests -------
    def bindings_by_number(self) -> Mapping[str, Sequence[Binding]]:
        """The registered softphone bindings, by number."""
        return self._registrar.by_number

    def peer_named(self, name: str) -> PeerSettings | None:
        return self.peers.by_name(name)

    @property
    def shedding_all(self) -> bool:
        """Overloaded with a backlog behind this read: every new call is refused."""
        return self._shedder.surge

    def would_shed(self, method: str, in_dialog: bool) -> bool:
        return self._shedder.sheds(method, in_dialog=in_dialog)

    def transactions(self) -> TransactionCounts:
        table = self._table
        return TransactionCounts(
            len(table.server),
            len(table.settled),
            tuple(tx.context.kind for tx in table.client.values()),
            len(self._forwarder.calls),
            len(self._answering.calls),
            len(self._answering.wakeups),
        )

    def client_kinds_on(self, flow: Flow) -> list[str]:
        """What our client transactions on a connection are for (forward, health, ...)."""
        return [tx.context.kind for tx in self._table.clients_on(flow)]

    @property
    def call_limits(self) -> CallLimits:
        """The calls in progress that admission counts: the shell shares their counts with
        our other processes (`counts()`, `counted_elsewhere()`)."""
        return self._record.limits

    def set_overloaded(self, overloaded: bool, shed_ratio: float = 1.0) -> None:
        """While overloaded, refuse `shed_ratio` of new calls (spread evenly) with 503."""
        self._shedder.set(overloaded, shed_ratio)

    def set_backlogged(self, backlogged: bool) -> None:
        """Whether the messages handled next have a backlog waiting behind them: while
        overloaded, new calls are then all refused (not only the share)."""
        self._shedder.surge = backlogged and self._shedder.overloaded

    @property
    def overloaded(self) -> bool:
        return self._shedder.overloaded

    @property
    def shed(self) -> int:
        return self._shedder.shed

    def start_drain(self) -> None:
        """From now on new calls get 503 + Retry-After; calls in flight finish."""
        self.draining = True

    def use_certificate(self, info: CertInfo) -> None:
        """Our certificate in use, named in the call line of every call that uses TLS."""
        self._forwarder.our_thumbprint_sha1 = info.thumbprint_sha1
        self._answering.our_thumbprint_sha1 = info.thumbprint_sha1

    def take_events(self) -> list[Event]:
        """What happened since the last call, oldest first (the shell logs them)."""
        if not self._events:
            return []
        events = self._events[:]
        self._events.clear()
        return events

    def statistics(self) -> CoreStatistics:
        targets = tuple((p.name, self.health.is_up(p)) for p in self._health_checks.targets)
        return CoreStatistics.of(
            self.draining, self._shedder, self._record, self._registrar, targets
        )

    # --- DNS (RFC 3263): the shell runs the lookups the core asks for -------------------
    def take_lookups(self) -> Sequence[Lookup]:
        return self._forwarder.picker.locations.take_lookups()

    def located(self, lookup: Lookup, located: Located, now: float) -> list[Transmit]:
        """A lookup is answered: the calls that waited for it go on."""
        out: list[Transmit] = []
        for call in self._forwarder.picker.locations.resolved(lookup, located, now):
            out += self._forwarder.resume(call, now)
        return out

    @property
    def health(self) -> HealthTable:
        return self._health_checks.health

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
        peer = tls_peer if flow.transport is TLS else self.peers.by_address(flow.remote[0])
        if self._shedder.overloaded and peer is not None:
            retry_after = self.config.limits.overload_retry_after
            refused = self._shedder.refuse_at_door(data, flow, peer, retry_after)
            if refused is not None:
                return refused
        if data.startswith(b"ACK ") and acks_a_refusal(data):
            return []  # the ACK of a refusal at the door: no transaction waits for it
        return self._receive(data, flow, peer, now, stream=True, cert=peer_cert)

    def transport_failed(self, flow: Flow, reason: str, now: float) -> list[Transmit]:
        """The transport could not deliver on `flow` (refused, TLS failed, closed)."""
        self._health_checks.transport_failed(flow, reason)
        self._registrar.flow_closed(flow, reason)
        return self._forwarder.transport_failed(flow, reason, now)

    def framing_lost(self, error: FramingError, flow: Flow) -> list[Transmit]:
        """The stream cannot be framed any more: answer the offending request if we can
        read it, then close the connection."""
        return self._intake.framing_lost(error, flow)

    def busy(self) -> int:
        """What a drain waits for: transactions without their final response, and answered
        calls whose BYE has not passed yet."""
        calls = self._forwarder.busy() + self._answering.busy() + len(self._record.open_dialogs)
        return self._table.pending_server() + calls

    # --- time ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        # Asked after every message: plain comparisons, not min() over a generator (an
        # object and a call into the interpreter each time, in the compiled core).
        earliest = self._table.next_deadline()
        for deadline in (
            self._health_checks.next_deadline(),
            self._answering.next_deadline(),
            self._registrar.next_deadline(),
        ):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def handle_timers(self, now: float) -> list[Transmit]:
        self._table.forget_settled(now)
        self._registrar.due(now)
        out: list[Transmit] = []
        for tx in self._table.due(now):
            if isinstance(tx, ServerTransaction):
                out += self._responder.drive(tx, tx.handle_timer(now))
            elif isinstance(tx, ClientTransaction) and tx.context.kind == "health":
                out += self._health_checks.drive(tx, tx.handle_timer(now))
            elif isinstance(tx, ClientTransaction):
                out += self._forwarder.drive(tx, tx.handle_timer(now), now)
        return out + self._health_checks.due(now) + self._answering.due(now)

    @property
    def transaction_count(self) -> int:
        return len(self._table.server) + len(self._table.settled)

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
            return self._intake.malformed(exc, exc.partial, flow, peer)
        if isinstance(message, Response):
            return self._response_received(message, flow, now)
        assert isinstance(message, Request)
        try:
            validate.check_envelope(message)
        except RemoteProtocolError as error:  # not `exc`: that one is a ParseError
            return self._intake.malformed(error, message, flow, peer)
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
        existing = self._table.server.get(key)
        if existing is None and (settled := self._table.settled.get(key)) is not None:
            return [Transmit(settled.reply_to, settled.data)]  # a retransmission (Timer J)
        if existing is not None:
            outputs = existing.receive_request(request, now)
            out = self._responder.drive(existing, outputs)
            for item in outputs:
                if isinstance(item, RequestReceived):  # an ACK for a 2xx that reused the branch
                    out += self._dialogs.ack(item.request)
            return out
        if peer is None:
            if request.method == "ACK":
                return []
            return self._intake.unknown_source(request, flow, reply_to)
        if request.method == "ACK":
            answered = self._answering.dialog_of(request)
            if answered is not None:
                self._answering.ack(answered)
                return []
            return self._dialogs.ack(request)
        context = ServerContext(
            key, flow, reply_to, peer, request.method, request.call_id, request, cert
        )
        tx = ServerTransaction.create(
            request.method, reliable=flow.reliable, now=now, timers=self._timers, context=context
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
        if self._shedder.sheds(request.method, in_dialog):
            return self._shedder.refuse(tx, self.config.limits.overload_retry_after, now)
        if self.draining and not in_dialog:
            retry = self.config.routing.retry_after
            return self._responder.unavailable(tx, "Server is shutting down", retry, now)
        self._table.server[key] = tx
        if request.method == "OPTIONS" and self._us.pinged(request, flow):
            return self._options(tx, request, now)
        if self._from_sibling(peer):
            if not in_dialog:
                return self._handed_over(tx, request, now)
        elif proxy_ops.is_loop(request, self._us.host):
            why = "our Via is already in the request"
            return self._responder.answer(tx, 482, "Loop Detected", now, log_reason=why)
        if request.method == "REGISTER":
            return self._registrar.register(tx, request, now)
        if in_dialog:
            answered = self._answering.dialog_of(request)
            if answered is not None:
                return self._answering.request(tx, request, answered, now)
            return self._dialogs.request(tx, request, now)
        return self._route(tx, request, now)

    def _refuse(
        self, tx: ServerTransaction, exc: RemoteProtocolError, now: float
    ) -> list[Transmit]:
        return self._responder.answer(
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
        return self._responder.answer(tx, 200, "OK", now, headers=headers)

    def _from_sibling(self, peer: PeerSettings) -> bool:
        return self._sharing is not None and peer is self._sharing.sibling

    def _handed_over(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        """A call another process of ours routed to a softphone whose flow we hold: route it
        as if its caller (named on the Route) had called us, and ring our own flows only.
        (Our processes never loop: what a sibling hands over is never handed on.)"""
        request, hop, ours = proxy_ops.pop_our_routes(request, self._us.is_ours)
        caller = self.peers.by_name(hop.peer) if hop is not None and hop.peer else None
        if not ours or caller is None or caller.name == SIBLING_NAME:
            why = "a request from another sipserver process that names no caller on our Route"
            return self._responder.answer(tx, 403, "Forbidden", now, log_reason=why)
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
        self._record.count(plan, "refused_503", peer)
        retry = str(self.config.routing.retry_after)
        return self._responder.answer(
            tx,
            503,
            "Service Unavailable",
            now,
            headers=(self._responder.warning(reached.warning), ("Retry-After", retry)),
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
            return self._responder.answer(
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
            self._record.count(decision.plan, f"refused_{decision.status}", peer)
            return self._responder.answer(
                tx,
                decision.status,
                decision.reason,
                now,
                headers=(self._responder.warning(decision.warning), *decision.headers),
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
            reached = self._record.limits.admit(
                self.config, peer, decision.plan, request.call_id or "", now
            )
            if reached is not None:
                return self._over_limit(tx, decision.plan, reached, peer, now)
        if isinstance(decision, router.Proxy):
            return self._forwarder.start_call(
                tx,
                request,
                decision.plan,
                decision.targets,
                now,
                number=decision.number,
                handed_over=caller is not None,
            )
        if isinstance(decision, router.Answer):
            return self._answering.start(tx, request, decision.plan, decision.number, now)
        self._record.count(decision.plan, "redirected", peer)
        return self._responder.answer(
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
        invite = self._table.server.get(invite_key)
        self._table.server[tx.context.key] = tx
        downstream = self._forwarder.cancel(invite_key, now)
        if downstream is not None:
            # §16.10: answer the CANCEL, cancel the branch downstream; the 487 comes back from it.
            return self._responder.answer(tx, 200, "OK", now) + downstream
        if invite is None or invite.state is not State.PROCEEDING:
            why = "CANCEL matches no pending INVITE"
            return self._responder.answer(
                tx, 481, "Call/Transaction Does Not Exist", now, log_reason=why
            )
        self._answering.cancelled(invite_key, now)
        out = self._responder.answer(tx, 200, "OK", now)
        return out + self._responder.answer(
            invite, 487, "Request Terminated", now, log_reason="cancelled"
        )

    def _response_received(self, response: Response, flow: Flow, now: float) -> list[Transmit]:
        tx = self._table.client_for(response)
        if tx is not None and tx.context.kind == "health":
            return self._health_checks.drive(tx, tx.receive_response(response, now))
        handled = self._forwarder.response_received(response, now)
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
