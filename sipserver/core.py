"""The server's SIP behaviour as a pure state machine: bytes and time in, bytes out.

The trio adapters in `transport/` feed it datagrams and framed stream messages with the
flow they arrived on and the current time; it answers with `Transmit`s, and tells them
when it next needs `handle_timers`. Nothing here touches a socket or reads a clock.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from sipserver import SERVER_NAME
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy import ProxyCall, ProxyEngine
from sipserver.routing import router
from sipserver.routing.health import HealthTable
from sipserver.routing.peers import PeerTable
from sipserver.settings import Config, PeerSettings
from sipserver.sip import proxy_ops, validate
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.framing import FramingError
from sipserver.sip.message import Message, ParseError, ParseLimits, Request, Response, parse_message
from sipserver.sip.responses import make_response, warning_value
from sipserver.sip.transaction import (
    ClientTransaction,
    Output,
    SendMessage,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
    TimerValues,
    Transaction,
    server_key,
)
from sipserver.sip.uri import SipUri, UriError, parse_uri
from sipserver.sip.via import Via

log = structlog.get_logger("sipserver")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY, SUBSCRIBE, MESSAGE"
ACCEPT = "application/sdp"
SUPPORTED_OPTIONS: frozenset[str] = frozenset()  # option tags we honour in Require/Proxy-Require


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from, and so where its answers go."""

    transport: str  # "udp" | "tcp" | "tls"
    local: tuple[str, int]
    remote: tuple[str, int]
    connection_id: int | None = None  # set for tcp/tls connections that exist
    server_name: str | None = None  # outbound: the FQDN the far end must prove (TLS, SNI)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class Transmit:
    flow: Flow
    data: bytes
    close_after: bool = False  # for streams: close once sent (framing was lost)


@dataclass(slots=True)
class ServerContext:
    """What the core keeps with each server transaction. The request is let go once the
    final response is sent: retransmissions only need the response bytes."""

    key: tuple[str, ...]
    flow: Flow  # where the request came from
    reply_to: Flow  # where responses go (§18.2.2), worked out once
    peer: PeerSettings | None
    method: str
    call_id: str | None
    request: Request | None
    peer_cert: CertInfo | None = None


class SipCore:
    def __init__(self, config: Config, timers: TimerValues | None = None) -> None:
        self._fixed_timers = timers
        self.timers = timers or TimerValues()
        self._transactions: dict[tuple[str, ...], ServerTransaction] = {}
        self._deadlines: list[tuple[float, int, Transaction]] = []
        self._seq = itertools.count()
        self.proxy = ProxyEngine(self)
        self.ports = {
            "udp": config.server.sip_port,
            "tcp": config.server.sip_port,
            "tls": config.server.tls_port,
        }
        self.our_thumbprint_sha1: str | None = None
        self.draining = False  # set on SIGTERM: new calls get 503, calls in flight finish
        # (dial plan, security, outcome) -> calls
        self.call_outcomes: Counter[tuple[str, str, str]] = Counter()
        # Calls answered through us and not yet hung up (Call-ID -> answered at), so that a
        # drain also waits for their BYE, which must pass through our Record-Route.
        self.open_dialogs: dict[str, float] = {}
        self.configure(config)

    def set_ports(self, sip_port: int, tls_port: int) -> None:
        """The ports actually bound (config may say 0), for our Via and Record-Route."""
        self.ports = {"udp": sip_port, "tcp": sip_port, "tls": tls_port}

    def configure(self, config: Config) -> None:
        """Swap in a new configuration; transactions in flight carry on."""
        self.config = config
        self.peers = PeerTable(config.peers)
        self.limits = ParseLimits(
            config.limits.max_message_bytes,
            config.limits.max_header_count,
            config.limits.max_line_bytes,
        )
        self._agent = config.server.fqdn
        # The host in our Via and Record-Route: the FQDN (what TLS peers verify), or an
        # address where peers cannot resolve it (server.advertised_host).
        self._host = config.server.advertised_host or config.server.fqdn
        t = config.timers
        self.timers = self._fixed_timers or TimerValues(t.t1, t.t2, t.t4, t.timer_c)
        previous = getattr(self, "health", None)
        self.health = HealthTable(config.routing.down_after_failures)
        if previous is not None:
            self.health.carry_over(previous)
        target_names = {name for plan in config.dial_plans for name in plan.targets}
        self.health_targets = tuple(
            p for p in config.peers if p.name in target_names and p.health_check > 0
        )
        self._our_hosts = {config.server.fqdn, "localhost", self._host} | {
            a for a in config.server.addresses if not ipaddress.ip_address(a).is_unspecified
        }

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
        peer = tls_peer if flow.transport == "tls" else self.peers.by_address(flow.remote[0])
        self.proxy.note_stream(peer, flow)
        return self._receive(data, flow, peer, now, stream=True, cert=peer_cert)

    def busy(self) -> int:
        """What a drain waits for: transactions without their final response, and answered
        calls whose BYE has not passed yet."""
        pending = sum(
            1 for tx in self._transactions.values() if tx.state in (State.TRYING, State.PROCEEDING)
        )
        calls = sum(1 for call in self.proxy.calls.values() if not call.done)
        return pending + calls + len(self.open_dialogs)

    def health_tick(self, now: float) -> list[Transmit]:
        """OPTIONS pings to the dial-plan targets that are due (the server calls this
        about once a second)."""
        return self.proxy.health_tick(self.health_targets, now)

    def transport_failed(self, flow: Flow, reason: str, now: float) -> list[Transmit]:
        """The transport could not deliver on `flow` (refused, TLS failed, closed)."""
        return self.proxy.transport_failed(flow, reason, now)

    def framing_lost(self, error: FramingError, flow: Flow) -> list[Transmit]:
        """The stream cannot be framed any more: answer the offending request if we can
        read it, then close the connection."""
        log.warning("sip_framing_lost", reason=error.reason, status=error.status)
        if error.head:
            try:
                partial = parse_message(error.head + b"\r\n\r\n", self.limits, stream=False)
            except ParseError as exc:
                partial = exc.partial  # type: ignore[assignment]
            if (
                isinstance(partial, Request)
                and partial.method != "ACK"
                and partial.top_via is not None
            ):
                response = self._response(partial, error.status, error.reason)
                return [Transmit(flow, response.to_bytes(), close_after=True)]
        return [Transmit(flow, b"", close_after=True)]

    def next_deadline(self) -> float | None:
        while self._deadlines:
            due, _, tx = self._deadlines[0]
            if tx.terminated or tx.deadline != due:
                heapq.heappop(self._deadlines)
                continue
            return due
        return None

    def handle_timers(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            due, _, tx = heapq.heappop(self._deadlines)
            if tx.terminated or tx.deadline != due:
                continue
            if isinstance(tx, ClientTransaction):
                out += self.proxy._drive(tx, tx.handle_timer(now), now)
            else:
                assert isinstance(tx, ServerTransaction)
                out += self._drive(tx, tx.handle_timer(now))
        return out

    def schedule(self, tx: Transaction) -> None:
        if not tx.terminated and tx.deadline is not None:
            heapq.heappush(self._deadlines, (tx.deadline, next(self._seq), tx))

    @property
    def transaction_count(self) -> int:
        return len(self._transactions)

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
            return self._malformed(exc, exc.partial, flow, peer)
        with structlog.contextvars.bound_contextvars(call_id=message.call_id):
            if isinstance(message, Response):
                return self._response_received(message, flow, now)
            assert isinstance(message, Request)
            try:
                validate.check_envelope(message)
            except RemoteProtocolError as exc:
                return self._malformed(exc, message, flow, peer)
            return self._request_received(message, flow, peer, now, cert)

    def _malformed(
        self,
        exc: RemoteProtocolError,
        partial: Message | None,
        flow: Flow,
        peer: PeerSettings | None,
    ) -> list[Transmit]:
        fields = {
            "reason": exc.reason,
            "status": exc.status,
            "transport": flow.transport,
            "remote": _addr(flow.remote),
            "peer": peer.name if peer else None,
        }
        if isinstance(partial, Response):
            log.warning("sip_response_malformed", action="dropped", **fields)
            return []
        if not isinstance(partial, Request) or partial.method == "ACK":
            log.warning("sip_request_malformed", action="dropped", **fields)
            return []
        if peer is None and self.config.server.unknown_source == "drop":
            log.warning("sip_request_malformed", action="dropped (unknown source)", **fields)
            return []
        try:
            via = partial.top_via
        except UriError:
            via = None
        if via is None:
            log.warning("sip_request_malformed", action="dropped (no usable Via)", **fields)
            return []
        log.warning("sip_request_malformed", action="answered", **fields)
        via = self._stamp_via(partial, flow)
        response = self._response(partial, exc.status, exc.reason, exc.headers)
        return [Transmit(self._response_flow(via, flow), response.to_bytes())]

    def _request_received(
        self,
        request: Request,
        flow: Flow,
        peer: PeerSettings | None,
        now: float,
        cert: CertInfo | None = None,
    ) -> list[Transmit]:
        via = self._stamp_via(request, flow)
        key = server_key(request, via)
        reply_to = self._response_flow(via, flow)
        existing = self._transactions.get(key)
        if existing is not None:
            return self._drive(existing, existing.receive_request(request, now))
        if peer is None:
            if request.method == "ACK":
                return []
            return self._unknown_source(request, flow, reply_to)
        if request.method == "ACK":
            return self._forward_ack(request, peer, flow)
        tx = ServerTransaction.create(
            request.method,
            reliable=flow.reliable,
            now=now,
            timers=self.timers,
            context=ServerContext(
                key, flow, reply_to, peer, request.method, request.call_id, request, cert
            ),
        )
        try:
            validate.check_request_line(request)
            validate.check_method(request)
        except RemoteProtocolError as exc:
            return self._answer(
                tx, exc.status, exc.reason, now, headers=exc.headers, log_reason=exc.reason
            )
        if request.method == "CANCEL":
            return self._cancel(tx, request, now)
        to = request.to
        if self.draining and not (to is not None and to.tag):
            retry = str(self.config.routing.retry_after)
            return self._answer(
                tx,
                503,
                "Service Unavailable",
                now,
                headers=(
                    ("Retry-After", retry),
                    ("Warning", warning_value(self._agent, "Server is shutting down")),
                ),
                log_reason="server is shutting down",
            )
        self._transactions[key] = tx
        if request.method == "OPTIONS" and self._addressed_to_us(request, flow):
            return self._options(tx, request, now)
        if proxy_ops.is_loop(request, self._host):
            return self._answer(
                tx, 482, "Loop Detected", now, log_reason="our Via is already in the request"
            )
        to = request.to
        if to is not None and to.tag:
            return self._in_dialog(tx, request, now)
        return self._route(tx, request, now)

    # --- answers -----------------------------------------------------------------------
    def _options(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        try:
            validate.check_required_options(request, "Require", SUPPORTED_OPTIONS)
        except RemoteProtocolError as exc:
            return self._answer(
                tx, exc.status, exc.reason, now, headers=exc.headers, log_reason=exc.reason
            )
        headers = (
            ("Allow", ALLOW),
            ("Accept", ACCEPT),
            ("Supported", ", ".join(sorted(SUPPORTED_OPTIONS))),
        )
        return self._answer(tx, 200, "OK", now, headers=headers)

    def _route(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        peer = tx.context.peer
        if validate.max_forwards(request) == 0:
            return self._answer(tx, 483, "Too Many Hops", now, log_reason="Max-Forwards is 0")
        try:
            validate.check_required_options(request, "Proxy-Require", SUPPORTED_OPTIONS)
        except RemoteProtocolError as exc:
            return self._answer(
                tx, exc.status, exc.reason, now, headers=exc.headers, log_reason=exc.reason
            )
        assert peer is not None
        decision = router.route(
            self.config, request, peer, tx.context.flow.transport, self.health.is_up
        )
        plan = decision.plan
        outcome = (
            "redirected"
            if isinstance(decision, router.Redirect)
            else f"refused_{decision.status}"
            if isinstance(decision, router.Reject)
            else None
        )
        if outcome is not None:
            self.call_outcomes[
                (plan.name if plan else "", plan.security if plan else "", outcome)
            ] += 1
        if isinstance(decision, router.Reject):
            return self._answer(
                tx,
                decision.status,
                decision.reason,
                now,
                headers=(
                    ("Warning", warning_value(self._agent, decision.warning)),
                    *decision.headers,
                ),
                log_reason=decision.warning,
                event=decision.log_event,
                dial_plan=decision.plan.name if decision.plan else None,
                security=decision.plan.security if decision.plan else None,
            )
        if isinstance(decision, router.Proxy):
            return self.proxy.start_call(tx, request, decision.plan, decision.targets, now)
        if isinstance(decision, router.Redirect):
            return self._answer(
                tx,
                302,
                "Moved Temporarily",
                now,
                headers=(("Contact", decision.contact),),
                event="call_redirected",
                dial_plan=decision.plan.name,
                security=decision.plan.security,
                target=decision.target.name,
                target_fqdn=decision.target.fqdn,
                contact=decision.contact,
            )
        raise AssertionError(decision)

    def _cancel(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        invite_key = server_key(replace(request, method="INVITE"))
        invite = self._transactions.get(invite_key)
        self._transactions[tx.context.key] = tx
        if self.proxy.cancel(invite_key, now):
            # §16.10: answer the CANCEL, cancel the branch downstream; the 487 comes back from it.
            return self._answer(tx, 200, "OK", now) + self.proxy.cancel_transmits(invite_key, now)
        if invite is None or invite.state is not State.PROCEEDING:
            return self._answer(
                tx,
                481,
                "Call/Transaction Does Not Exist",
                now,
                log_reason="CANCEL matches no pending INVITE",
            )
        out = self._answer(tx, 200, "OK", now)
        return out + self._answer(invite, 487, "Request Terminated", now, log_reason="cancelled")

    def _unknown_source(self, request: Request, flow: Flow, reply_to: Flow) -> list[Transmit]:
        text = (
            f"Source address {flow.remote[0]} is not an address of any configured gateway or PBX; "
            f"add it to a [[peer]] or call over mutual TLS"
        )
        fields = {
            "method": request.method,
            "transport": flow.transport,
            "remote": _addr(flow.remote),
            "reason": "unknown_source",
        }
        if self.config.server.unknown_source == "drop":
            log.warning("sip_request_refused", action="dropped", **fields)
            return []
        log.warning("sip_request_refused", action="403", status=403, **fields)
        response = self._response(
            request, 403, "Forbidden", (("Warning", warning_value(self._agent, text)),)
        )
        return [Transmit(reply_to, response.to_bytes())]

    def _answer(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        now: float,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        log_reason: str | None = None,
        event: str = "sip_request_answered",
        **log_fields: str | None,
    ) -> list[Transmit]:
        context: ServerContext = tx.context
        flow, peer = context.flow, context.peer
        assert context.request is not None, "the final response was already sent"
        response = self._response(context.request, status, reason, headers)
        level = log.info if status < 400 else log.warning
        level(
            event,
            method=context.method,
            status=status,
            reason=log_reason or reason,
            transport=flow.transport,
            remote=_addr(flow.remote),
            peer=peer.name if peer else None,
            peer_fqdn=peer.fqdn if peer else None,
            **log_fields,
        )
        self._transactions.setdefault(context.key, tx)
        out = self._drive(tx, tx.send_response(response, now))
        if status >= 200:
            context.request = None
        return out

    def _response(
        self, request: Request, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        response = make_response(request, status, reason, headers)
        response.headers.add("Server", SERVER_NAME)
        return response

    def _response_received(self, response: Response, flow: Flow, now: float) -> list[Transmit]:
        handled = self.proxy.response_received(response, now)
        if handled is not None:
            return handled
        # §18.1.2: a response that matches no transaction is dropped.
        log.debug(
            "sip_response_unmatched",
            status=response.status,
            transport=flow.transport,
            remote=_addr(flow.remote),
        )
        return []

    # --- proxying (called by ProxyEngine) ------------------------------------------------
    def transmit(self, flow: Flow, data: bytes) -> Transmit:
        return Transmit(flow, data)

    def build_response(self, request: Request, status: int, reason: str) -> Response:
        return self._response(request, status, reason)

    def send_response(
        self, tx: ServerTransaction, response: Response, now: float
    ) -> list[Transmit]:
        """Send a response (ours or relayed from downstream) through a server transaction."""
        out = self._drive(tx, tx.send_response(response, now))
        if response.status >= 200:
            tx.context.request = None
        return out

    def answer_with_warning(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        warning: str,
        now: float,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> list[Transmit]:
        call = self.proxy.calls.get(tx.context.key)
        if call is not None:
            self.proxy.finished_locally(call)
            self.log_call(call, status, now, warning)
        return self._answer(
            tx,
            status,
            reason,
            now,
            headers=(("Warning", warning_value(self._agent, warning)), *headers),
            log_reason=warning,
            event="call_failed" if call is not None else "sip_request_answered",
        )

    def our_hop(self, transport: str) -> proxy_ops.Hop:
        return proxy_ops.Hop(self._host, self.ports[transport], transport)

    def _hop(self, transport: str, peer: PeerSettings | None) -> proxy_ops.Hop:
        return proxy_ops.Hop(
            self._host, self.ports[transport], transport, peer.name if peer else None
        )

    def forwarded_copy(
        self, call: ProxyCall, uri: str, transport: str, target: PeerSettings | None
    ) -> Request:
        inbound = call.inbound
        params: dict[str, str | None] = {
            "branch": proxy_ops.branch_for(call.request, call.attempt),
            "rport": None,
        }
        if transport != "udp":
            params["alias"] = None  # RFC 5923: this connection may carry requests back to us
        via = Via(transport.upper(), self._host, self.ports[transport], params)
        record_route: tuple[proxy_ops.Hop, ...] = ()
        if call.plan is not None and call.request.method in ("INVITE", "SUBSCRIBE", "REFER"):
            # Always two entries (RFC 5658 style): each names its leg's transport and peer, so
            # in-dialog requests return over the same secured legs to the same peers.
            record_route = (
                self._hop(transport, target),
                self._hop(inbound.flow.transport, inbound.peer),
            )
        identity = self.config.routing.identity_header
        return proxy_ops.forward_request(
            call.request,
            request_uri=uri,
            via=via,
            record_route=record_route,
            strip=(identity,),
            add=((identity, self._identity_value(inbound)),) if inbound.peer else (),
        )

    def _identity_value(self, inbound: ServerContext) -> str:
        assert inbound.peer is not None
        if inbound.flow.transport == "tls" and inbound.peer_cert:
            return f"{inbound.peer.fqdn};transport=tls;cert-sha256={inbound.peer_cert.thumbprint_sha256}"
        return f"{inbound.peer.fqdn};transport={inbound.flow.transport};source={inbound.flow.remote[0]}"

    def log_call(self, call: ProxyCall, status: int, now: float, detail: str | None = None) -> None:
        """The one canonical line per routed call."""
        inbound = call.inbound
        call_id = call.request.call_id or ""
        if call.plan is not None and call.request.method == "INVITE" and status < 300:
            self.open_dialogs[call_id] = now
            # Oldest first (insertion order): forget calls whose BYE never came through us.
            while (oldest := next(iter(self.open_dialogs.items()))) and now - oldest[1] > 86400:
                del self.open_dialogs[oldest[0]]
        elif call.request.method == "BYE":
            self.open_dialogs.pop(call_id, None)
        if call.plan is None:
            event = "in_dialog_request_routed" if status < 300 else "in_dialog_request_failed"
        else:
            event = "call_routed" if status < 300 else "call_ended"
            outcome = "answered" if status < 300 else f"failed_{status}"
            self.call_outcomes[(call.plan.name, call.plan.security, outcome)] += 1
        log.info(
            event,
            method=call.request.method,
            status=status,
            detail=detail,
            dial_plan=call.plan.name if call.plan else None,
            security=call.plan.security if call.plan else None,
            peer=inbound.peer.name if inbound.peer else None,
            peer_fqdn=inbound.peer.fqdn if inbound.peer else None,
            transport=inbound.flow.transport,
            **(inbound.peer_cert.log_fields("peer_cert_") if inbound.peer_cert else {}),
            **self.proxy.target_certificate_fields(call.target_flow),
            decision="proxy",
            target=call.target.name if call.target else None,
            target_fqdn=call.target.fqdn if call.target else None,
            target_transport=call.target_flow.transport if call.target_flow else None,
            target_address=_addr(call.target_flow.remote) if call.target_flow else None,
            attempts=call.attempt,
            failed_attempts=call.attempts or None,
            our_thumbprint_sha1=self.our_thumbprint_sha1
            if "tls"
            in (inbound.flow.transport, call.target_flow.transport if call.target_flow else "")
            else None,
            setup_ms=round((now - call.started) * 1000, 1),
        )

    def _is_ours(self, uri: SipUri) -> bool:
        return uri.host in self._our_hosts and (uri.port is None or uri.port in self.ports.values())

    def _in_dialog(self, tx: ServerTransaction, request: Request, now: float) -> list[Transmit]:
        """A request inside a dialog: follow the Route set we recorded (§16.4, §16.12)."""
        request, hop, ours = proxy_ops.pop_our_routes(request, self._is_ours)
        if hop is None or not ours:
            return self._answer(
                tx,
                404,
                "Not Found",
                now,
                headers=(
                    ("Warning", warning_value(self._agent, "In-dialog request without our Route")),
                ),
                log_reason="in-dialog request without our Route",
            )
        tx.context.request = request
        peer = self.peers.by_name(hop.peer) if hop.peer else None
        return self.proxy.start_call(
            tx, request, None, (), now, first_hop=(hop.uri, hop.transport, peer)
        )

    def _forward_ack(self, request: Request, peer: PeerSettings, flow: Flow) -> list[Transmit]:
        """ACK for a 2xx: a new transaction-less request, relayed along the Route set."""
        to = request.to
        if to is None or not to.tag:
            return []
        request, hop, ours = proxy_ops.pop_our_routes(request, self._is_ours)
        if hop is None or not ours:
            return []
        next_peer = self.peers.by_name(hop.peer) if hop.peer else None
        target_flow = self.proxy.flow_for(hop.uri, hop.transport, next_peer)
        if target_flow is None:
            return []
        via = Via(
            hop.transport.upper(),
            self._host,
            self.ports[hop.transport],
            {"branch": proxy_ops.branch_for(request, 0), "rport": None},
        )
        identity = self.config.routing.identity_header
        forwarded = proxy_ops.forward_request(
            request, request_uri=request.uri, via=via, strip=(identity,)
        )
        return [Transmit(target_flow, forwarded.to_bytes())]

    # --- plumbing ------------------------------------------------------------------------
    def _drive(self, tx: ServerTransaction, outputs: Sequence[Output]) -> list[Transmit]:
        context: ServerContext = tx.context
        flow = context.flow
        out: list[Transmit] = []
        for item in outputs:
            if isinstance(item, SendMessage):
                out.append(Transmit(context.reply_to, item.data))
            elif isinstance(item, TimedOut):
                log.warning(
                    "sip_transaction_timeout",
                    timer=item.timer,
                    method=context.method,
                    call_id=context.call_id,
                    remote=_addr(flow.remote),
                )
            elif isinstance(item, Terminated):
                self._transactions.pop(context.key, None)
        self.schedule(tx)
        return out

    def _stamp_via(self, request: Request, flow: Flow) -> Via | None:
        """§18.2.1 received and RFC 3581 rport on the top Via, so every response built from
        this request carries them and goes back to where the request came from. Returns
        the stamped top Via, parsed once for the rest of the request's handling."""
        via = request.top_via
        if via is None:
            return None
        stamped = via.with_received(flow.remote[0], flow.remote[1])
        if stamped != via:
            request.headers.replace_first_value("Via", str(stamped))
        return stamped

    def _response_flow(self, via: Via | None, flow: Flow) -> Flow:
        """§18.2.2: streams answer on the connection; UDP answers to the source address
        and the rport (or the Via port, or 5060)."""
        if flow.reliable or via is None:
            return flow
        rport = via.params.get("rport")
        port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
        return replace(flow, remote=(flow.remote[0], port))

    def _addressed_to_us(self, request: Request, flow: Flow) -> bool:
        """A Request-URI with one of our names, or with no user part: nothing could be
        routed on without a number, so an OPTIONS like that is a ping of this hop."""
        try:
            uri = parse_uri(request.uri)
        except UriError:
            return False
        return uri.user is None or uri.host in self._our_hosts or uri.host == flow.local[0]


def _addr(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
