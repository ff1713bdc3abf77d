"""What happened, as values. The pure core returns these instead of logging; the shell
turns each into exactly one log line (`sipserver.server.event_log`). An event's `name` is
the log event name, its fields are the line's fields (a CertInfo field becomes the
certificate's issuer, serial and thumbprints under that field's name as prefix)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from sipserver.pki.certinfo import CertInfo

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    name: ClassVar[str] = "event"
    level: ClassVar[str] = "info"  # debug | info | warning | error
    call_id: str | None = None

    def fields(self) -> dict[str, Any]:
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))
        return {name: getattr(self, name) for name in names}

    @property
    def log_level(self) -> str:
        return self.level

    @property
    def log_name(self) -> str:
        return self.name


# --- messages the core could not take ---------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class FramingLost(Event):
    """A stream can no longer be split into messages; its connection closes."""

    name = "sip_framing_lost"
    level = "warning"
    reason: str
    status: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageMalformed(Event):
    """A message we could not take: answered 400 (a request) or dropped (a response)."""

    level = "warning"
    kind: str  # request | response
    action: str  # answered | dropped (why)
    reason: str
    status: int
    transport: str
    remote: str
    peer: str | None

    @property
    def log_name(self) -> str:
        return f"sip_{self.kind}_malformed"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownSourceRefused(Event):
    """A request from an address of no configured peer."""

    name = "sip_request_refused"
    level = "warning"
    action: str  # 403 | dropped
    status: int | None
    method: str
    transport: str
    remote: str
    reason: str = "unknown_source"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseUnmatched(Event):
    """§18.1.2: a response that matches no transaction is dropped."""

    name = "sip_response_unmatched"
    level = "debug"
    status: int
    transport: str
    remote: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTimedOut(Event):
    """A transaction of ours got no answer in time (Timer B or F)."""

    name = "sip_transaction_timeout"
    level = "warning"
    timer: str
    method: str
    remote: str


# --- answers we gave -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Answered(Event):
    """We answered a request ourselves (not relayed). Warning level from 400 up."""

    name = "sip_request_answered"
    method: str
    status: int
    reason: str
    transport: str
    remote: str
    peer: str | None
    peer_fqdn: str | None

    @property
    def log_level(self) -> str:
        return "info" if self.status < 400 else "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRefused(Answered):
    """A dial plan (or the lack of one) refused the call: `refusal` names the rule."""

    refusal: str = "call_refused"  # call_refused | call_refused_insecure_transport | ...
    dial_plan: str | None = None
    security: str | None = None

    @property
    def log_name(self) -> str:
        return self.refusal

    def fields(self) -> dict[str, Any]:
        fields = Event.fields(self)
        del fields["refusal"]
        return fields


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRedirected(Answered):
    """A dial plan with action = "redirect" answered 302 with its first healthy target."""

    name = "call_redirected"
    dial_plan: str
    security: str
    target: str
    target_fqdn: str
    contact: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallShed(Answered):
    """A new call refused with 503 because the server is overloaded. At debug level: the
    shell logs when overload starts and ends, with how many calls were shed."""

    name = "call_shed"

    @property
    def log_level(self) -> str:
        return "debug"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFailed(Answered):
    """A call we were proxying ended with our own final answer (no target, cancelled...)."""

    name = "call_failed"


# --- proxying ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class CallCompleted(Event):
    """The one canonical line per routed request: who called, over what, with which
    certificates, which dial plan, where it went and how it ended."""

    method: str
    status: int
    detail: str | None
    dial_plan: str | None
    security: str | None
    peer: str | None
    peer_fqdn: str | None
    transport: str
    remote: str  # the caller's address, and its connection (the call arrived on it)
    connection_id: int | None
    peer_cert: CertInfo | None
    target_cert: CertInfo | None
    decision: str = "proxy"
    target: str | None
    target_fqdn: str | None
    target_transport: str | None
    target_address: str | None
    target_connection_id: int | None
    attempts: int
    failed_attempts: list[str] | None
    our_thumbprint_sha1: str | None
    setup_ms: float

    @property
    def log_level(self) -> str:
        # One line per call at info; a routed in-dialog request (ACK, BYE, re-INVITE) is
        # a per-message detail.
        return "debug" if self.dial_plan is None and self.status < 300 else "info"

    @property
    def log_name(self) -> str:
        if self.dial_plan is None:
            return "in_dialog_request_routed" if self.status < 300 else "in_dialog_request_failed"
        return "call_routed" if self.status < 300 else "call_ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStarted(Event):
    """One try of one target begins (each failover step is one)."""

    name = "call_attempt_started"
    level = "debug"
    target: str | None
    attempt: int
    method: str
    remote: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    """One try of one target failed; the call goes on to the next, or fails."""

    name = "call_attempt_failed"
    level = "warning"
    target: str
    reason: str
    attempt: int
    dial_plan: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaAnswerViolation(Event):
    """A secured call's answer offered media without SRTP (the offer was checked)."""

    name = "security_violation_media_answer"
    level = "error"
    dial_plan: str | None  # None in-dialog (the mode came from our Record-Route)
    status: int
    target: str | None
    problems: list[str]


# --- health -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class TargetHealthChanged(Event):
    """A target went down after its failed health checks, or came back up."""

    name = "target_health_changed"
    target: str
    target_fqdn: str
    state: str  # up | down
    reason: str

    @property
    def log_level(self) -> str:
        return "info" if self.state == "up" else "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetHealthChecked(Event):
    """One OPTIONS health check of a target, and how it went."""

    name = "target_health_checked"
    level = "debug"
    target: str
    ok: bool
    reason: str


# --- the answering target -----------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class CallAnswered(Event):
    """The answering target took a call (a dial plan with action = "answer"): who called,
    over what, with which certificates, and what the media answer holds."""

    name = "call_answered"
    dial_plan: str
    security: str
    number: str
    peer: str | None
    peer_fqdn: str | None
    transport: str
    remote: str
    peer_cert: CertInfo | None
    our_thumbprint_sha1: str | None
    media: list[str]
    setup_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AnsweredCallEnded(Event):
    """A call of the answering target is over, and why."""

    name = "answered_call_ended"
    dial_plan: str
    ended_by: str  # caller_bye | hangup_timer | longest_call | no_ack | cancelled
    duration_s: float | None  # from the answer; None when it never was answered


# --- the registrar --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationChanged(Event):
    """A softphone's binding was added, refreshed, had its flow replaced (same instance and
    reg-id over a new connection), was removed, or expired."""

    change: str  # added | refreshed | replaced | removed | expired
    reason: str | None = None  # why a binding was removed
    peer: str
    number: str
    contact: str
    transport: str
    remote: str
    expires: int | None  # seconds granted; None once removed
    instance: str | None
    reg_id: int | None
    peer_cert_thumbprint_sha256: str | None

    @property
    def log_name(self) -> str:
        return f"registration_{self.change}"
