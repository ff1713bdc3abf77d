"""The transaction-stateful proxy (RFC 3261 §16): forwards calls to dial-plan targets with
failover, routes in-dialog requests along the Record-Route set, relays CANCEL and 2xx
retransmissions (through both transactions' Accepted state, RFC 6026), answers 408 when
Timer C ends a call that rings too long, and records one CallCompleted per routed request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sipserver.config.choices import Security
from sipserver.config.schema import Config, DialPlanSettings, PeerSettings
from sipserver.proxy.calls import (
    Branch,
    CallRecord,
    ClientContext,
    ProxyCall,
    answer_media_violation,
    identity_value,
)
from sipserver.proxy.connection_directory import ConnectionDirectory
from sipserver.proxy.events import (
    Answered,
    AttemptStarted,
    CallFailed,
    Event,
)
from sipserver.proxy.forking import Branches
from sipserver.proxy.hops import OurAddress
from sipserver.proxy.live_transactions import TransactionTable
from sipserver.proxy.registrar import Registrar
from sipserver.proxy.responder import Headers, Responder
from sipserver.proxy.shared_bindings import BindingQueries, BindingsFound, Sharing
from sipserver.proxy.targets import TargetPicker, Waiting, note_failure
from sipserver.routing.target_health import HealthTable
from sipserver.sip import proxy_ops
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.matching import client_key
from sipserver.sip.message import Request, Response
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    Output,
    ResponseReceived,
    SendMessage,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
)

INVITE_LIKE: Final = ("INVITE", "SUBSCRIBE", "REFER")  # requests that may create a dialog


class Forwarder:
    def __init__(
        self,
        table: TransactionTable,
        responder: Responder,
        record: CallRecord,
        events: list[Event],
        connections: ConnectionDirectory,
        registrar: Registrar,
    ) -> None:
        self.table = table
        self.registrar = registrar
        self.responder = responder
        self.record = record
        self.events = events
        self.connections = connections
        self.calls: dict[tuple[str, ...], ProxyCall] = {}
        self.picker = TargetPicker(
            connections, events, HealthTable(1), registrar
        )  # by server transaction key
        self.our_thumbprint_sha1: str | None = None
        self.sharing: Sharing | None = None  # set when bindings are shared between processes
        self.queries: BindingQueries[ProxyCall] = BindingQueries()
        self.branches = Branches(self, registrar, responder, events, self.queries)

    def configure(
        self, config: Config, us: OurAddress, timers: TimerValues, health: HealthTable
    ) -> None:
        self.config, self.us, self.timers, self.health = config, us, timers, health
        self.picker.health = health

    # --- new requests -----------------------------------------------------------------
    def start_call(
        self,
        tx: ServerTransaction,
        request: Request,
        plan: DialPlanSettings | None,
        targets: Sequence[PeerSettings],
        now: float,
        first_hop: tuple[proxy_ops.NextHop, PeerSettings | None] | None = None,
        security: str | None = None,
        number: str | None = None,
        handed_over: bool = False,
    ) -> list[Transmit]:
        call = ProxyCall(tx, request, tx.context, plan, list(targets), now)
        call.security = plan.security if plan is not None else security
        call.number = number
        call.handed_over = handed_over
        self.calls[tx.context.key] = call
        out: list[Transmit] = []
        if request.method == "INVITE":
            trying = self.responder.response(request, 100, "Trying")
            out += self.responder.send(tx, trying, now)
        if first_hop is not None:
            return out + self._forward_in_dialog(call, *first_hop, now)
        return out + self._try_next(call, now)

    def _try_next(self, call: ProxyCall, now: float) -> list[Transmit]:
        if call.targets and call.targets[0].is_softphone:
            return self.branches.fork(call, now)
        attempt = self.picker.next(call, now)
        if attempt is None:
            return self._exhausted(call, now)
        if isinstance(attempt, Waiting):
            return []  # the shell looks the target up; resume() carries on
        target, transport, uri, flow = attempt.target, attempt.transport, attempt.uri, attempt.flow
        return self.send_attempt(call, target, transport, uri, flow, now)

    def resume(self, call: ProxyCall, now: float) -> list[Transmit]:
        """A lookup this call waited for is answered."""
        if call.done:
            return []
        if call.cancelled:
            return self.fail(call.server_tx, 487, "Request Terminated", "cancelled", now)
        return self._try_next(call, now)

    def bindings_found(self, call: ProxyCall, found: BindingsFound, now: float) -> list[Transmit]:
        """The shared store answered where the number's other flows are."""
        call.remote = found.remote
        if found.error is not None:
            call.attempts.append(f"other processes' bindings unknown: {found.error}")
        return self.resume(call, now)

    def _forward_in_dialog(
        self, call: ProxyCall, hop: proxy_ops.NextHop, peer: PeerSettings | None, now: float
    ) -> list[Transmit]:
        uri, transport = hop.uri, hop.transport
        flow = self.picker.in_dialog_flow(hop, peer)
        if flow is None and peer is not None and peer.is_softphone:
            why = f"Softphone {peer.name} has no registered {transport.upper()} flow any more"
            return self.fail(call.server_tx, 480, "Temporarily Unavailable", why, now)
        if flow is None:
            why = f"No route to {uri}: not an allow-listed peer"
            return self.fail(call.server_tx, 404, "Not Found", why, now)
        return self.send_attempt(call, peer, transport, call.request.uri, flow, now)

    def send_attempt(
        self,
        call: ProxyCall,
        target: PeerSettings | None,
        transport: Transport,
        uri: str,
        flow: Flow,
        now: float,
    ) -> list[Transmit]:
        call.attempt += 1
        kind = "fork" if call.branches is not None else "forward"
        call.target, call.target_flow = target, flow
        forwarded = self._forwarded_copy(call, uri, transport, target, flow)
        tx, first = ClientTransaction.create(
            forwarded,
            reliable=transport.reliable,
            now=now,
            timers=self.timers,
            context=ClientContext(call, flow, kind),
        )
        if call.branches is not None and target is not None:
            call.branches.append(Branch(tx, target, flow))
        else:
            call.client_tx = tx
        self.table.add_client(tx)
        self.events.append(
            AttemptStarted(
                call_id=call.request.call_id,
                target=target.name if target else None,
                attempt=call.attempt,
                method=call.request.method,
                remote=flow.remote_text,
            )
        )
        return self.drive(tx, first, now)

    def _forwarded_copy(
        self,
        call: ProxyCall,
        uri: str,
        transport: Transport,
        target: PeerSettings | None,
        flow: Flow,
    ) -> Request:
        inbound = call.inbound
        via = self.us.via(transport, proxy_ops.branch_for(call.request, call.attempt))
        record_route: tuple[proxy_ops.Hop, ...] = ()
        if call.plan is not None and call.request.method in INVITE_LIKE:
            # Always two entries (RFC 5658 style): each names its leg's transport and peer, so
            # in-dialog requests return over the same secured legs to the same peers.
            held = call.plan.security if call.plan.security == Security.SECURED else None
            out_flow = call.target_flow if target and target.is_softphone else None
            in_flow = inbound.flow if inbound.peer and inbound.peer.is_softphone else None
            sibling_host = self.sharing.hop_host if self.sharing is not None else None
            record_route = (
                self.us.hop(
                    transport,
                    target.name if target else None,
                    held,
                    out_flow.connection_id if out_flow else None,
                    sibling_host if self._is_sibling(target) else None,
                ),
                self.us.hop(
                    inbound.flow.transport,
                    inbound.peer.name if inbound.peer else None,
                    held,
                    in_flow.connection_id if in_flow else None,
                    sibling_host if self._is_sibling(inbound.peer) else None,
                ),
            )
        identity = self.config.routing.identity_header
        if self._is_sibling(inbound.peer):
            # The process that handed the call over verified the caller and said who it is.
            return proxy_ops.forward_request(
                call.request, request_uri=uri, via=via, record_route=record_route
            )
        return proxy_ops.forward_request(
            call.request,
            request_uri=uri,
            via=via,
            record_route=record_route,
            strip=(identity,),
            add=((identity, identity_value(call)),) if inbound.peer else (),
            route=self._handover_route(call, target, flow),
        )

    def _is_sibling(self, peer: PeerSettings | None) -> bool:
        return self.sharing is not None and peer is self.sharing.sibling

    def _handover_route(
        self, call: ProxyCall, target: PeerSettings | None, flow: Flow
    ) -> str | None:
        """A call handed to the process holding a softphone's flow names the caller (that
        process routes it as if the caller had called it), on a Route to that process."""
        if not self._is_sibling(target) or call.plan is None or call.inbound.peer is None:
            return None
        return proxy_ops.Hop(
            flow.remote[0], flow.remote[1], Transport.TLS, call.inbound.peer.name
        ).uri()

    def forward_ack(
        self, request: Request, hop: proxy_ops.NextHop, peer: PeerSettings | None
    ) -> list[Transmit]:
        """ACK for a 2xx: a new transaction-less request, relayed along the Route set."""
        target_flow = self.picker.in_dialog_flow(hop, peer)
        if target_flow is None:
            return []
        via = self.us.via(hop.transport, proxy_ops.branch_for(request, 0), alias=False)
        identity = self.config.routing.identity_header
        forwarded = proxy_ops.forward_request(
            request, request_uri=request.uri, via=via, strip=(identity,)
        )
        return [Transmit(target_flow, forwarded.to_bytes())]

    def _exhausted(self, call: ProxyCall, now: float) -> list[Transmit]:
        tried = "; ".join(call.attempts) or "no target"
        plan = call.plan.name if call.plan else "in-dialog route"
        why = f"All targets of {plan} failed: {tried}"
        if call.attempts and call.attempts[-1].endswith("timeout"):
            return self.fail(call.server_tx, 408, "Request Timeout", why, now)
        retry = (("Retry-After", str(self.config.routing.retry_after)),)
        return self.fail(call.server_tx, 503, "Service Unavailable", why, now, retry)

    def fail(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        warning: str,
        now: float,
        headers: Headers = (),
    ) -> list[Transmit]:
        """Our own final answer to a request we were forwarding (or about to)."""
        call = self.calls.pop(tx.context.key, None)
        if call is not None:
            call.done = True
            self._complete(call, status, now, warning)
        return self.responder.answer(
            tx,
            status,
            reason,
            now,
            headers=(self.responder.warning(warning), *headers),
            log_reason=warning,
            event=CallFailed if call is not None else Answered,
        )

    def _complete(
        self, call: ProxyCall, status: int, now: float, detail: str | None = None
    ) -> None:
        flow = call.target_flow
        self.events.append(
            self.record.completed(
                call,
                status,
                now,
                detail=detail,
                target_cert=self.connections.certificate_of(flow) if flow else None,
                target_connection_id=self.connections.connection_id_of(flow) if flow else None,
                our_thumbprint_sha1=self.our_thumbprint_sha1,
            )
        )

    # --- flows --------------------------------------------------------------------------
    def transport_failed(self, flow: Flow, reason: str, now: float) -> list[Transmit]:
        """A connection could not be opened, failed TLS, or broke: every attempt on it
        fails at once, so failover does not wait for Timer B."""
        out: list[Transmit] = []
        for tx in self.table.clients_on(flow):
            if tx.context.kind == "health":
                continue
            self.table.forget_client(tx)
            call = tx.context.call
            if call is not None and tx.context.kind == "forward" and call.client_tx is tx:
                out += self._attempt_failed(call, reason, now)
            elif call is not None and (branch := self.branches.branch_of(call, tx)) is not None:
                out += self.branches.failed(call, branch, 503, reason, now)
        return out

    # --- responses ----------------------------------------------------------------------
    def response_received(self, response: Response, now: float) -> list[Transmit] | None:
        """None when the response matches no client transaction of ours."""
        try:
            key = client_key(response)
        except RemoteProtocolError:
            return None
        tx = self.table.client.get(key)
        if tx is None:
            return None
        return self.drive(tx, tx.receive_response(response, now), now)

    def drive(self, tx: ClientTransaction, outputs: Sequence[Output], now: float) -> list[Transmit]:
        context: ClientContext = tx.context
        call = context.call
        out: list[Transmit] = []
        for item in outputs:
            if isinstance(item, SendMessage):
                out.append(Transmit(context.flow, item.data))
            elif isinstance(item, Terminated):
                self.table.forget_client(tx)
                if call is not None:  # its deadline may linger in the heap: keep no call
                    tx.context = ClientContext(None, context.flow, context.kind)
            elif isinstance(item, ResponseReceived) and context.answered is not None:
                out += self.relay_late_2xx(context.answered, item.response, now)
            elif call is None:
                continue
            elif context.kind == "fork":
                out += self.branches.on_output(call, tx, item, now)
            elif context.kind != "forward":
                continue
            elif isinstance(item, ResponseReceived):
                out += self._on_response(call, tx, item.response, now)
            elif isinstance(item, TimedOut):
                out += self._on_timeout(call, tx, item.timer, now)
        self.table.schedule(tx)
        return out

    def _on_response(
        self, call: ProxyCall, tx: ClientTransaction, response: Response, now: float
    ) -> list[Transmit]:
        if call.done and 200 <= response.status < 300:
            return self.relay_late_2xx(call.server_tx, response, now)
        if call.client_tx is not tx or call.done or response.status == 100:
            return []
        if response.status == 503 and (call.targets or call.hops) and not call.cancelled:
            return self._attempt_failed(call, "503 Service Unavailable", now)
        if response.status < 200:
            call.provisional = True
            self.check_answer_media(call, response)
            upstream = proxy_ops.strip_top_via(response)
            out = self.responder.send(call.server_tx, upstream, now)
            if call.cancelled and not call.cancel_sent:
                out += self._send_cancel(call, now)
            return out
        if response.status < 300:
            self.keep_for_2xx_retransmissions(call, tx)
        return self.relay_final(call, response, now)

    def relay_final(self, call: ProxyCall, response: Response, now: float) -> list[Transmit]:
        if response.status < 300:
            self.check_answer_media(call, response)
        upstream = proxy_ops.strip_top_via(response)
        call.done = True
        self.calls.pop(call.inbound.key, None)
        self._complete(call, upstream.status, now)
        return self.responder.send(call.server_tx, upstream, now)

    def keep_for_2xx_retransmissions(self, call: ProxyCall, tx: ClientTransaction) -> None:
        if tx.accepted:
            # Only the way back is kept for the 2xx retransmissions of Accepted; the call
            # itself (requests, targets) can go.
            tx.context = ClientContext(None, tx.context.flow, "accepted", answered=call.server_tx)

    def relay_late_2xx(
        self, server_tx: ServerTransaction, response: Response, now: float
    ) -> list[Transmit]:
        """A 2xx after the call was settled: a retransmission of the answer, or an answer
        that crossed our CANCEL or 408. §16.7 step 5: a 2xx always goes upstream; through
        the Accepted server transaction while it lasts, else straight to the caller."""
        upstream = proxy_ops.strip_top_via(response)
        if server_tx.accepted:
            return self.responder.send(server_tx, upstream, now)
        return [Transmit(server_tx.context.reply_to, upstream.to_bytes())]

    def _on_timeout(
        self, call: ProxyCall, tx: ClientTransaction, timer: str, now: float
    ) -> list[Transmit]:
        if call.client_tx is not tx or call.done:
            return []
        if timer == "C":
            # §16.8: still ringing after Timer C. The callee is cancelled and the caller
            # told at once, rather than kept waiting for a 487 that may never come.
            cancel = self._send_cancel(call, now) if not call.cancel_sent else []
            name = call.target.name if call.target else "the target"
            why = f"No answer from {name} within {self.timers.timer_c:g} s (Timer C); cancelled"
            call.attempts.append(f"{name}: no answer within Timer C")
            return cancel + self.fail(call.server_tx, 408, "Request Timeout", why, now)
        return self._attempt_failed(call, "timeout", now)

    def _attempt_failed(self, call: ProxyCall, reason: str, now: float) -> list[Transmit]:
        flow = call.target_flow
        name = call.target.name if call.target else str(flow.remote if flow else "?")
        if call.located and flow is not None:
            name += f" at {flow.remote_text}"
        note_failure(self.events, call, name, reason)
        if call.cancelled:
            return self.fail(call.server_tx, 487, "Request Terminated", "cancelled", now)
        if call.plan is None:
            return self._exhausted(call, now)
        return self._try_next(call, now)

    # --- CANCEL -------------------------------------------------------------------------
    def cancel(self, invite_key: tuple[str, ...], now: float) -> list[Transmit] | None:
        """An upstream CANCEL for a call we are proxying: what to send downstream, or None
        when we proxy no such call. §9.1: a CANCEL waits for a provisional response."""
        call = self.calls.get(invite_key)
        if call is None or call.done or call.server_tx.state is not State.PROCEEDING:
            return None
        call.cancelled = True
        if call.branches is not None:
            return self.branches.cancel_all(call, now)
        if call.cancel_sent or not call.provisional:
            return []
        return self._send_cancel(call, now)

    def _send_cancel(self, call: ProxyCall, now: float) -> list[Transmit]:
        if call.client_tx is None or call.target_flow is None:
            return []
        call.cancel_sent = True
        return self.cancel_on(call, call.client_tx, call.target_flow, now)

    def cancel_on(
        self, call: ProxyCall, invite_tx: ClientTransaction, flow: Flow, now: float
    ) -> list[Transmit]:
        if invite_tx.request is None:
            return []
        cancel = proxy_ops.build_cancel(invite_tx.request)
        tx, first = ClientTransaction.create(
            cancel,
            reliable=flow.reliable,
            now=now,
            timers=self.timers,
            context=ClientContext(call, flow, "cancel"),
        )
        self.table.add_client(tx)
        return self.drive(tx, first, now)

    def busy(self) -> int:
        return sum(1 for call in self.calls.values() if not call.done)

    def check_answer_media(self, call: ProxyCall, response: Response) -> None:
        if (violation := answer_media_violation(call, response)) is not None:
            self.events.append(violation)
