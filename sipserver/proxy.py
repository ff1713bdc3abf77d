"""The transaction-stateful proxy (RFC 3261 §16): forwards calls to dial-plan targets with
failover, routes in-dialog requests along the Record-Route set, relays CANCEL, and writes
one canonical log line per routed call. Pure: driven by SipCore with explicit time."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from sipserver.pki.certinfo import CertInfo
from sipserver.settings import DialPlanSettings, PeerSettings
from sipserver.sip import proxy_ops
from sipserver.sip.message import Request, Response
from sipserver.sip.sdp import SdpError, parse_sdp, srtp_violations
from sipserver.sip.transaction import (
    ClientTransaction,
    Output,
    ResponseReceived,
    SendMessage,
    ServerTransaction,
    State,
    Terminated,
    TimedOut,
    client_key,
)
from sipserver.sip.uri import SipUri

if TYPE_CHECKING:
    from sipserver.core import Flow, ServerContext, SipCore, Transmit

log = structlog.get_logger("sipserver")


@dataclass(eq=False, slots=True)
class ProxyCall:
    """One forwarded request and its attempts, from the server transaction's view."""

    server_tx: ServerTransaction
    request: Request  # as received, Via stamped
    inbound: ServerContext
    plan: DialPlanSettings | None  # None for in-dialog requests
    targets: list[PeerSettings]  # still to try, in order
    started: float
    attempts: list[str] = field(default_factory=list)
    attempt: int = 0
    client_tx: ClientTransaction | None = None
    target: PeerSettings | None = None
    target_flow: Flow | None = None
    provisional: bool = False
    cancelled: bool = False
    cancel_sent: bool = False
    done: bool = False


@dataclass(eq=False, slots=True)
class ClientContext:
    call: ProxyCall | None
    flow: Flow
    kind: str  # "forward" | "cancel" | "health"
    peer: PeerSettings | None = None  # the pinged target, for "health"


class ProxyEngine:
    def __init__(self, core: SipCore) -> None:
        self.core = core
        self.client_txs: dict[tuple[str, str], ClientTransaction] = {}
        self.calls: dict[tuple[str, ...], ProxyCall] = {}  # by server transaction key
        # Where to relay retransmitted 2xx to INVITE once the transactions are gone.
        self.answered: dict[str, Flow] = {}
        self._answered_expiry: collections.deque[tuple[float, str]] = collections.deque()
        self.peer_flows: dict[tuple[str, str], Flow] = {}  # (peer, transport) -> open stream
        self.target_certs: dict[tuple[str, str, int], CertInfo] = {}
        self.next_ping: dict[str, float] = {}
        self.pinging: set[str] = set()
        self._ping_numbers = itertools.count(1)

    # --- new requests -----------------------------------------------------------------
    def start_call(
        self,
        tx: ServerTransaction,
        request: Request,
        plan: DialPlanSettings | None,
        targets: Sequence[PeerSettings],
        now: float,
        first_hop: tuple[SipUri, str, PeerSettings | None] | None = None,
    ) -> list[Transmit]:
        call = ProxyCall(tx, request, tx.context, plan, list(targets), now)
        self.calls[tx.context.key] = call
        out: list[Transmit] = []
        if request.method == "INVITE":
            out += self.core.send_response(
                tx, self.core.build_response(request, 100, "Trying"), now
            )
        if first_hop is not None:
            return out + self._forward_in_dialog(call, *first_hop, now)
        return out + self._try_next(call, now)

    def _try_next(self, call: ProxyCall, now: float) -> list[Transmit]:
        while call.targets:
            target = call.targets.pop(0)
            if not self.core.health.is_up(target):
                call.attempts.append(f"{target.name}: down")
                continue
            transport = "tls" if call.plan and call.plan.requires_tls else target.transport
            uri = proxy_ops.retarget(call.request.uri, target.fqdn, target.send_port, transport)
            return self._send_attempt(
                call, target, transport, uri, self.target_flow(target, transport), now
            )
        return self._exhausted(call, now)

    def _forward_in_dialog(
        self, call: ProxyCall, uri: SipUri, transport: str, peer: PeerSettings | None, now: float
    ) -> list[Transmit]:
        flow = self.flow_for(uri, transport, peer)
        if flow is None:
            return self.core.answer_with_warning(
                call.server_tx,
                404,
                "Not Found",
                f"No route to {uri}: not an allow-listed peer",
                now,
            )
        return self._send_attempt(call, peer, transport, call.request.uri, flow, now)

    def _send_attempt(
        self,
        call: ProxyCall,
        target: PeerSettings | None,
        transport: str,
        uri: str,
        flow: Flow,
        now: float,
    ) -> list[Transmit]:
        call.attempt += 1
        call.target, call.target_flow = target, flow
        forwarded = self.core.forwarded_copy(call, uri, transport, target)
        tx, first = ClientTransaction.create(
            forwarded,
            reliable=transport != "udp",
            now=now,
            timers=self.core.timers,
            context=ClientContext(call, flow, "forward"),
        )
        call.client_tx = tx
        self.client_txs[client_key(forwarded)] = tx
        log.debug(
            "call_attempt_started",
            target=target.name if target else None,
            attempt=call.attempt,
            method=call.request.method,
            remote=f"{flow.remote[0]}:{flow.remote[1]}",
        )
        return self._drive(tx, first, now)

    def _exhausted(self, call: ProxyCall, now: float) -> list[Transmit]:
        tried = "; ".join(call.attempts) or "no target"
        plan = call.plan.name if call.plan else "in-dialog route"
        if call.attempts and call.attempts[-1].endswith("timeout"):
            status, reason = 408, "Request Timeout"
        else:
            status, reason = 503, "Service Unavailable"
        return self.core.answer_with_warning(
            call.server_tx,
            status,
            reason,
            f"All targets of {plan} failed: {tried}",
            now,
            headers=(("Retry-After", str(self.core.config.routing.retry_after)),)
            if status == 503
            else (),
        )

    # --- flows --------------------------------------------------------------------------
    def target_flow(self, target: PeerSettings, transport: str) -> Flow:
        from sipserver.core import Flow

        if transport != "udp" and (flow := self.peer_flows.get((target.name, transport))):
            return flow  # RFC 5923-style reuse of a connection we already share
        host = next(
            (str(net.network_address) for net in target.addresses if net.num_addresses == 1),
            target.fqdn,
        )
        return Flow(transport, ("", 0), (host, target.send_port), None, server_name=target.fqdn)

    def flow_for(self, uri: SipUri, transport: str, peer: PeerSettings | None) -> Flow | None:
        """Where an in-dialog request goes: an open connection to the peer our Route named,
        else the URI's address (TLS only to an allow-listed peer, verified by name)."""
        from sipserver.core import Flow

        if (
            peer is not None
            and transport != "udp"
            and (flow := self.peer_flows.get((peer.name, transport)))
        ):
            return flow
        if transport == "tls" and peer is None:
            return None
        port = uri.port or (5061 if transport == "tls" else 5060)
        return Flow(
            transport, ("", 0), (uri.host, port), None, server_name=peer.fqdn if peer else None
        )

    def note_target_certificate(self, flow: Flow, info: CertInfo) -> None:
        """The certificate an outbound TLS leg's target presented, for the call log."""
        self.target_certs[(flow.transport, flow.remote[0], flow.remote[1])] = info

    def target_certificate_fields(self, flow: Flow | None) -> dict[str, str]:
        if flow is None:
            return {}
        info = self.target_certs.get((flow.transport, flow.remote[0], flow.remote[1]))
        return info.log_fields("target_cert_") if info else {}

    def note_stream(self, peer: PeerSettings | None, flow: Flow) -> None:
        if peer is not None and flow.connection_id is not None:
            self.peer_flows[(peer.name, flow.transport)] = flow

    def transport_failed(self, flow: Flow, reason: str, now: float) -> list[Transmit]:
        """A connection could not be opened, failed TLS, or broke: every client transaction
        on it fails at once, so failover does not wait for Timer B."""
        for key, known in list(self.peer_flows.items()):
            if known == flow:
                del self.peer_flows[key]
        out: list[Transmit] = []
        for tx in [
            t for t in self.client_txs.values() if t.context.flow == flow and not t.terminated
        ]:
            self._forget(tx)
            if tx.context.kind == "health" and tx.context.peer is not None:
                self._health_result(tx.context.peer, False, reason)
                continue
            call = tx.context.call
            if call is not None and tx.context.kind == "forward" and call.client_tx is tx:
                out += self._attempt_failed(call, reason, now)
        return out

    # --- health checks --------------------------------------------------------------------
    def health_tick(self, targets: Sequence[PeerSettings], now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for peer in targets:
            if peer.name in self.pinging or self.next_ping.get(peer.name, now) > now:
                continue
            self.next_ping[peer.name] = now + peer.health_check
            out += self._ping(peer, now)
        return out

    def _ping(self, peer: PeerSettings, now: float) -> list[Transmit]:
        transport = peer.transport
        flow = self.target_flow(peer, transport)
        number = next(self._ping_numbers)
        our = self.core.our_hop(transport)
        uri = f"sip:{peer.fqdn}:{peer.send_port}" + (
            "" if transport == "udp" else f";transport={transport}"
        )
        request = proxy_ops.build_options(
            uri,
            peer.fqdn,
            our,
            f"{proxy_ops.BRANCH_PREFIX}hc{number}x{int(now * 1000)}",
            f"health-{number}-{peer.name}@{our.host}",
            number,
        )
        tx, first = ClientTransaction.create(
            request,
            reliable=transport != "udp",
            now=now,
            timers=self.core.timers,
            context=ClientContext(None, flow, "health", peer),
        )
        self.pinging.add(peer.name)
        self.client_txs[client_key(request)] = tx
        return self._drive(tx, first, now)

    def _health_result(self, peer: PeerSettings, ok: bool, reason: str) -> None:
        self.pinging.discard(peer.name)
        changed = self.core.health.record(peer, ok, reason)
        if changed is not None:
            (log.info if changed else log.warning)(
                "target_health_changed",
                target=peer.name,
                target_fqdn=peer.fqdn,
                state="up" if changed else "down",
                reason=reason,
            )
        else:
            log.debug("target_health_checked", target=peer.name, ok=ok, reason=reason)

    # --- responses ----------------------------------------------------------------------
    def response_received(self, response: Response, now: float) -> list[Transmit] | None:
        """None when the response matches no client transaction of ours."""
        try:
            key = client_key(response)
        except Exception:
            return None
        tx = self.client_txs.get(key)
        if tx is None:
            branch = key[0]
            if 200 <= response.status < 300 and key[1] == "INVITE" and branch in self.answered:
                # A retransmitted 2xx after our transactions ended: relay it statelessly.
                return [
                    self.core.transmit(
                        self.answered[branch], proxy_ops.strip_top_via(response).to_bytes()
                    )
                ]
            return None
        return self._drive(tx, tx.receive_response(response, now), now)

    def _drive(
        self, tx: ClientTransaction, outputs: Sequence[Output], now: float
    ) -> list[Transmit]:
        context: ClientContext = tx.context
        out: list[Transmit] = []
        for item in outputs:
            if isinstance(item, SendMessage):
                out.append(self.core.transmit(context.flow, item.data))
            elif context.kind == "health" and context.peer is not None:
                if isinstance(item, ResponseReceived) and item.response.status >= 200:
                    status = item.response.status
                    self._health_result(
                        context.peer, status < 500, f"{status} {item.response.reason}"
                    )
                elif isinstance(item, TimedOut):
                    self._health_result(context.peer, False, "timeout")
                elif isinstance(item, Terminated):
                    self._forget(tx)
            elif (
                isinstance(item, ResponseReceived)
                and context.call is not None
                and context.kind == "forward"
            ):
                out += self._on_response(context.call, tx, item.response, now)
            elif (
                isinstance(item, TimedOut)
                and context.call is not None
                and context.kind == "forward"
            ):
                out += self._on_timeout(context.call, tx, item.timer, now)
            elif isinstance(item, Terminated):
                self._forget(tx)
        self.core.schedule(tx)
        return out

    def _forget(self, tx: ClientTransaction) -> None:
        key = client_key(tx.request)
        if self.client_txs.get(key) is tx:
            del self.client_txs[key]

    def _on_response(
        self, call: ProxyCall, tx: ClientTransaction, response: Response, now: float
    ) -> list[Transmit]:
        if call.client_tx is not tx or call.done:
            return []
        if response.status == 100:
            return []
        if response.status == 503 and call.targets and not call.cancelled:
            return self._attempt_failed(call, "503 Service Unavailable", now)
        upstream = proxy_ops.strip_top_via(response)
        out: list[Transmit] = []
        if response.status < 200:
            call.provisional = True
            self._check_answer_media(call, response)
            out += self.core.send_response(call.server_tx, upstream, now)
            if call.cancelled and not call.cancel_sent:
                out += self._send_cancel(call, now)
            return out
        if response.status < 300:
            self._check_answer_media(call, response)
            if call.request.method == "INVITE":
                self._remember_answer(tx.request.top_via.branch or "", call.inbound.reply_to, now)  # type: ignore[union-attr]
        return out + self._finish(call, upstream, now)

    def _remember_answer(self, branch: str, reply_to: Flow, now: float) -> None:
        """Keep where a 2xx went for 64*T1, the time a UAS retransmits it (§13.3.1.4)."""
        while self._answered_expiry and self._answered_expiry[0][0] <= now:
            self.answered.pop(self._answered_expiry.popleft()[1], None)
        self.answered[branch] = reply_to
        self._answered_expiry.append((now + 64 * self.core.timers.t1, branch))

    def _on_timeout(
        self, call: ProxyCall, tx: ClientTransaction, timer: str, now: float
    ) -> list[Transmit]:
        if call.client_tx is not tx or call.done:
            return []
        if timer == "C":
            return self._send_cancel(call, now) if not call.cancel_sent else []
        return self._attempt_failed(call, "timeout", now)

    def _attempt_failed(self, call: ProxyCall, reason: str, now: float) -> list[Transmit]:
        name = (
            call.target.name
            if call.target
            else str(call.target_flow.remote if call.target_flow else "?")
        )
        call.attempts.append(f"{name}: {reason}")
        log.warning(
            "call_attempt_failed",
            target=name,
            reason=reason,
            attempt=call.attempt,
            dial_plan=call.plan.name if call.plan else None,
        )
        if call.cancelled:
            return self.core.answer_with_warning(
                call.server_tx, 487, "Request Terminated", "cancelled", now
            )
        if call.plan is None:
            return self._exhausted(call, now)
        return self._try_next(call, now)

    def _finish(self, call: ProxyCall, upstream: Response, now: float) -> list[Transmit]:
        call.done = True
        self.calls.pop(call.inbound.key, None)
        self.core.log_call(call, upstream.status, now)
        return self.core.send_response(call.server_tx, upstream, now)

    def finished_locally(self, call: ProxyCall) -> None:
        call.done = True
        self.calls.pop(call.inbound.key, None)

    # --- CANCEL -------------------------------------------------------------------------
    def cancel(self, invite_key: tuple[str, ...], now: float) -> bool:
        """An upstream CANCEL for a call we are proxying. False if there is none."""
        call = self.calls.get(invite_key)
        if call is None or call.done or call.server_tx.state is not State.PROCEEDING:
            return False
        call.cancelled = True
        return True

    def cancel_transmits(self, invite_key: tuple[str, ...], now: float) -> list[Transmit]:
        call = self.calls.get(invite_key)
        if call is None or call.cancel_sent or not call.provisional:
            return []  # §9.1: a CANCEL waits for a provisional response
        return self._send_cancel(call, now)

    def _send_cancel(self, call: ProxyCall, now: float) -> list[Transmit]:
        if call.client_tx is None or call.target_flow is None:
            return []
        call.cancel_sent = True
        cancel = proxy_ops.build_cancel(call.client_tx.request)
        tx, first = ClientTransaction.create(
            cancel,
            reliable=call.target_flow.reliable,
            now=now,
            timers=self.core.timers,
            context=ClientContext(call, call.target_flow, "cancel"),
        )
        self.client_txs[client_key(cancel)] = tx
        return self._drive(tx, first, now)

    # --- security -----------------------------------------------------------------------
    def _check_answer_media(self, call: ProxyCall, response: Response) -> None:
        if call.plan is None or call.plan.security != "secured" or not response.body:
            return
        try:
            problems = srtp_violations(parse_sdp(response.body))
        except SdpError as exc:
            problems = [f"malformed SDP answer ({exc})"]
        if problems:
            log.error(
                "security_violation_media_answer",
                dial_plan=call.plan.name,
                status=response.status,
                target=call.target.name if call.target else None,
                problems=problems,
            )
