"""A forwarded request and its attempts, and the record each one leaves: the canonical
call line, call outcomes for metrics, and the answered calls a drain waits for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from sipserver.config.choices import Security
from sipserver.config.schema import DialPlanSettings, PeerSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.admission import CallLimits
from sipserver.proxy.events import CallCompleted, MediaAnswerViolation
from sipserver.proxy.live_transactions import ServerContext
from sipserver.proxy.shared_bindings import RemoteBinding
from sipserver.sip.flow import Flow, Transport
from sipserver.sip.message import Request, Response
from sipserver.sip.sdp import SdpError, parse_sdp, srtp_violations
from sipserver.sip.transaction_machine import ClientTransaction, ServerTransaction

FORGET_DIALOGS_AFTER: Final = 86400.0  # seconds: a BYE that never came through us


@dataclass(eq=False, slots=True, init=False)
class ProxyCall:
    """One forwarded request and its attempts, from the server transaction's view."""

    server_tx: ServerTransaction
    request: Request  # as received, Via stamped
    inbound: ServerContext
    plan: DialPlanSettings | None  # None for in-dialog requests
    targets: list[PeerSettings]  # still to try, in order
    started: float
    # Not arguments of __init__ (nor of dataclasses.replace): each call starts afresh.
    attempts: list[str] = field(init=False)
    attempt: int = field(init=False)
    client_tx: ClientTransaction | None = field(init=False)
    target: PeerSettings | None = field(init=False)
    target_flow: Flow | None = field(init=False)
    provisional: bool = field(init=False)
    cancelled: bool = field(init=False)
    cancel_sent: bool = field(init=False)
    done: bool = field(init=False)
    # The dial plan's mode (for in-dialog requests: our Route's).
    security: str | None = field(init=False)
    number: str | None = field(init=False)  # the number dialled, as the dial plan matched it
    # Addresses DNS gave for the current target (RFC 3263), each one more failover step.
    hops: list[tuple[PeerSettings, str, int]] = field(init=False)
    located: bool = field(init=False)  # the attempt under way went to an address DNS gave
    branches: list[Branch] | None = field(init=False)  # parallel: a softphone's bindings
    # Other processes' bindings for the number (None: not asked yet); a call another of our
    # processes handed over rings our own bindings only, and is counted where it arrived.
    remote: tuple[RemoteBinding, ...] | None = field(init=False)
    handed_over: bool = field(init=False)

    # Written out: the generated one stays interpreted in the compiled core (one per call).
    def __init__(
        self,
        server_tx: ServerTransaction,
        request: Request,
        inbound: ServerContext,
        plan: DialPlanSettings | None,
        targets: list[PeerSettings],
        started: float,
    ) -> None:
        self.server_tx = server_tx
        self.request = request
        self.inbound = inbound
        self.plan = plan
        self.targets = targets
        self.started = started
        self.attempts = []
        self.attempt = 0
        self.client_tx = None
        self.target = None
        self.target_flow = None
        self.provisional = False
        self.cancelled = False
        self.cancel_sent = False
        self.done = False
        self.security = None
        self.number = None
        self.hops = []
        self.located = False
        self.branches = None
        self.remote = None
        self.handed_over = False


def identity_value(call: ProxyCall) -> str:
    """Who the caller is, as we verified it, for the identity header we add."""
    inbound = call.inbound
    assert inbound.peer is not None
    flow = inbound.flow
    if flow.transport == Transport.TLS and inbound.peer_cert:
        cert = inbound.peer_cert.thumbprint_sha256
        return f"{inbound.peer.fqdn};transport=tls;cert-sha256={cert}"
    return f"{inbound.peer.fqdn};transport={flow.transport};source={flow.remote[0]}"


def answer_media_violation(call: ProxyCall, response: Response) -> MediaAnswerViolation | None:
    """A secured call's answer that offers media without SRTP (the offer was checked)."""
    if call.security != Security.SECURED or not response.body:
        return None
    try:
        problems = srtp_violations(parse_sdp(response.body))
    except SdpError as exc:
        problems = [f"malformed SDP answer ({exc})"]
    if not problems:
        return None
    return MediaAnswerViolation(
        call_id=call.request.call_id,
        dial_plan=call.plan.name if call.plan else None,
        status=response.status,
        target=call.target.name if call.target else None,
        problems=problems,
    )


@dataclass(eq=False, slots=True)
class Branch:
    """One leg of a call forked in parallel to a softphone's registered flows."""

    tx: ClientTransaction
    target: PeerSettings
    flow: Flow
    provisional: bool = False
    cancel_sent: bool = False
    final: int | None = None  # its final status (ours when it failed without one)
    response: Response | None = None  # the final non-2xx response it received
    failure: str | None = None  # why it failed without a final response

    @property
    def pending(self) -> bool:
        return self.final is None


def best_response(branches: list[Branch]) -> Branch | None:
    """RFC 3261 §16.7 step 6: a 6xx if any, else the lowest class, of the responses the
    branches received; None when none received one."""
    answered = [b for b in branches if b.response is not None]
    if not answered:
        return None
    return min(answered, key=lambda b: ((b.final or 0) < 600, b.final or 0))


@dataclass(eq=False, slots=True, init=False)
class ClientContext:
    call: ProxyCall | None
    flow: Flow
    kind: str  # "forward" | "cancel" | "health" | "accepted"
    peer: PeerSettings | None  # the pinged target, for "health"
    # For "accepted" (an INVITE answered with 2xx, the call let go): where 2xx
    # retransmissions are relayed.
    answered: ServerTransaction | None

    # Written out, as Via's is: the generated one stays interpreted in the compiled core.
    def __init__(
        self,
        call: ProxyCall | None,
        flow: Flow,
        kind: str,
        peer: PeerSettings | None = None,
        answered: ServerTransaction | None = None,
    ) -> None:
        self.call = call
        self.flow = flow
        self.kind = kind
        self.peer = peer
        self.answered = answered


class CallRecord:
    def __init__(self) -> None:
        # (caller peer, dial plan, security, outcome) -> calls. Every value comes from the
        # configuration or a closed set: nothing a peer sends makes a new metric series.
        self.outcomes: Counter[tuple[str, str, str, str]] = Counter()
        # Calls answered through us and not yet hung up (Call-ID -> answered at), so that a
        # drain also waits for their BYE, which must pass through our Record-Route.
        self.open_dialogs: dict[str, float] = {}
        self.limits = CallLimits()  # calls in progress, for admission control

    def count(self, plan: DialPlanSettings | None, outcome: str, peer: PeerSettings | None) -> None:
        self.outcomes[
            (
                peer.name if peer else "",
                plan.name if plan else "",
                plan.security if plan else "",
                outcome,
            )
        ] += 1

    def completed(
        self,
        call: ProxyCall,
        status: int,
        now: float,
        *,
        detail: str | None,
        target_cert: CertInfo | None,
        our_thumbprint_sha1: str | None,
        target_connection_id: int | None = None,
    ) -> CallCompleted:
        inbound = call.inbound
        request = call.request
        call_id = request.call_id or ""
        if call.plan is not None and request.method == "INVITE" and status < 300:
            self.open_dialogs[call_id] = now
            # Oldest first (insertion order): forget calls whose BYE never came through us.
            while (oldest := next(iter(self.open_dialogs.items()))) and (
                now - oldest[1] > FORGET_DIALOGS_AFTER
            ):
                del self.open_dialogs[oldest[0]]
                self.limits.ended(oldest[0])
        elif call.plan is not None and request.method == "INVITE":
            self.limits.ended(call_id)  # failed, cancelled or timed out: no dialog
        elif request.method == "BYE":
            self.open_dialogs.pop(call_id, None)
            self.limits.ended(call_id)
        if call.plan is not None and not call.handed_over:
            # The target chose the status: counted by its class (a closed set).
            outcome = "answered" if status < 300 else f"failed_{status // 100}xx"
            self.count(call.plan, outcome, inbound.peer)
        target_flow = call.target_flow
        uses_tls = Transport.TLS in (
            inbound.flow.transport,
            target_flow.transport if target_flow else None,
        )
        return CallCompleted(
            call_id=request.call_id,
            method=request.method,
            status=status,
            detail=detail,
            dial_plan=call.plan.name if call.plan else None,
            security=call.plan.security if call.plan else None,
            peer=inbound.peer.name if inbound.peer else None,
            peer_fqdn=inbound.peer.fqdn if inbound.peer else None,
            transport=inbound.flow.transport,
            remote=inbound.flow.remote_text,
            connection_id=inbound.flow.connection_id,
            peer_cert=inbound.peer_cert,
            target_cert=target_cert,
            target=call.target.name if call.target else None,
            target_fqdn=call.target.fqdn if call.target else None,
            target_transport=target_flow.transport if target_flow else None,
            target_address=target_flow.remote_text if target_flow else None,
            target_connection_id=target_connection_id,
            attempts=call.attempt,
            failed_attempts=call.attempts or None,
            our_thumbprint_sha1=our_thumbprint_sha1 if uses_tls else None,
            setup_ms=round((now - call.started) * 1000, 1),
        )
