"""Routing decisions for requests that are not for the server itself: which dial plan,
whether its security mode lets the call in, and where it goes.

Nothing is silently downgraded: every refusal carries a status, a Warning text and a log
event name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sipserver.config.schema import Config, DialPlanSettings, PeerSettings
from sipserver.routing.dialplan import denied_by, find_dial_plan, normalise_number
from sipserver.sip.message import Request
from sipserver.sip.sdp import SdpError, parse_sdp, srtp_violations
from sipserver.sip.uri import parse_uri


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str
    warning: str  # text of the Warning: 399 header and of the log event
    log_event: str = "call_refused"
    plan: DialPlanSettings | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Redirect:
    plan: DialPlanSettings
    target: PeerSettings
    contact: str


@dataclass(slots=True, unsafe_hash=True, init=False)
class Proxy:
    """Immutable, as Via is (see there why the fields are Final and __init__ written out)."""

    plan: Final[DialPlanSettings]
    targets: Final[tuple[PeerSettings, ...]]
    number: Final[str]

    def __init__(
        self, plan: DialPlanSettings, targets: tuple[PeerSettings, ...], number: str
    ) -> None:
        self.plan = plan
        self.targets = targets
        self.number = number


@dataclass(frozen=True, slots=True)
class Answer:
    """The dial plan's action is answer: the server answers the call itself."""

    plan: DialPlanSettings
    number: str


Decision = Reject | Redirect | Proxy | Answer


def route(
    config: Config,
    request: Request,
    peer: PeerSettings,
    transport: str,
    is_up: Callable[[PeerSettings], bool] = lambda _: True,
) -> Decision:
    uri = parse_uri(request.uri)
    number = normalise_number(uri.user_unescaped or "")
    who = f"peer {peer.name} ({peer.fqdn})"
    plan = find_dial_plan(config.dial_plans, peer.name, number) if number else None
    if plan is None:
        shown = number or "(no user part)"
        return Reject(
            404, "Not Found", f"No dial plan for number {shown} from {who}", "no_dial_plan"
        )
    denied = denied_by(plan, number)
    if denied is not None:
        return Reject(
            403,
            "Forbidden",
            f"Number {number} is denied by dial plan {plan.name} (deny_numbers {denied})",
            "call_refused_denied_number",
            plan,
        )
    if plan.requires_tls and transport != "tls":
        return Reject(
            403,
            "Forbidden",
            f"Dial plan {plan.name} is {plan.security} and requires mutual TLS; "
            f"the call from {who} arrived over {transport.upper()}",
            "call_refused_insecure_transport",
            plan,
        )
    if plan.security == "secured" and request.method == "INVITE":
        problem = media_problem(request)
        if problem:
            return Reject(
                488,
                "Not Acceptable Here",
                f"Dial plan {plan.name} is secured and requires SRTP: {problem}",
                "call_refused_insecure_media",
                plan,
            )
    if plan.action == "answer":
        return Answer(plan, number)
    every = tuple(config.peer(name) for name in plan.targets)
    if any(target.is_softphone for target in every):
        # The number picks the softphone: those that own it ring (on every flow they
        # registered); other numbers go to the plan's other targets.
        owners = tuple(t for t in every if t.is_softphone and number in t.numbers)
        if owners:
            return Proxy(plan, owners, number)
        every = tuple(target for target in every if not target.is_softphone)
        if not every:
            return Reject(
                404,
                "Not Found",
                f"No softphone of dial plan {plan.name} has number {number}",
                "no_softphone",
                plan,
            )
    targets = tuple(target for target in every if is_up(target))
    if not targets:
        return Reject(
            503,
            "Service Unavailable",
            f"No healthy target for dial plan {plan.name}: {', '.join(plan.targets)} failed their health checks",
            "call_refused_no_target",
            plan,
            (("Retry-After", str(config.routing.retry_after)),),
        )
    if plan.action == "redirect":
        target = targets[0]
        return Redirect(plan, target, redirect_contact(uri.user or "", target, plan, uri.scheme))
    # The proxy gets them all, in order, and notes the ones it skips as down.
    return Proxy(plan, every, number)


def media_problem(request: Request) -> str | None:
    """Why this offer breaks a secured dial plan (no SDP, no SRTP on a stream), or None."""
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if not request.body:
        return f"the {request.method} carries no SDP offer"
    if content_type != "application/sdp":
        return f"the {request.method} body is {content_type or 'untyped'}, not an SDP offer"
    try:
        sdp = parse_sdp(request.body)
    except SdpError as exc:
        return f"the SDP offer is malformed ({exc})"
    if not any(m.active for m in sdp.media):
        return "the SDP offer has no active media stream"
    problems = srtp_violations(sdp)
    return "; ".join(problems) if problems else None


def in_dialog_media_problem(request: Request, security: str | None) -> str | None:
    """Why a re-INVITE's or UPDATE's offer breaks a secured call, or None (no offer in it is
    fine: the offer then comes with the answer)."""
    if security != "secured" or request.method not in ("INVITE", "UPDATE") or not request.body:
        return None
    problem = media_problem(request)
    return f"The call is secured and requires SRTP in-dialog too: {problem}" if problem else None


def redirect_contact(user: str, target: PeerSettings, plan: DialPlanSettings, scheme: str) -> str:
    """Where a redirected call goes: the target by FQDN and port; over TLS (and sips: if the
    caller used sips:) when the dial plan is secured, like Exchange UM's redirect to its
    worker process."""
    transport = "tls" if plan.requires_tls else target.transport
    use_scheme = "sips" if plan.requires_tls and scheme == "sips" else "sip"
    userpart = f"{user}@" if user else ""
    return f"<{use_scheme}:{userpart}{target.fqdn}:{target.send_port};transport={transport}>"
