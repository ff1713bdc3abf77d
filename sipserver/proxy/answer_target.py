"""The built-in answering target: a dial plan with action = "answer" is answered here, like
the echo-test number of a PBX, for signalling and TLS interop tests. It rings
(`answer_after`), answers with SDP that honours the plan's mode (SDES-keyed SRTP where the
offer asks for it), keeps the dialog (ACK, BYE, re-INVITE, UPDATE, CANCEL before the
answer) and hangs up by itself after `answer_hangup_after` seconds if that is set. No
media is ever sent: the SDP points at the discard port."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sipserver.config.schema import DialPlanSettings
from sipserver.proxy.calls import CallRecord, ClientContext
from sipserver.proxy.events import AnsweredCallEnded, CallAnswered, Event
from sipserver.proxy.hops import OurAddress
from sipserver.proxy.live_transactions import ServerContext, TransactionTable
from sipserver.proxy.responder import Responder
from sipserver.proxy.wakeups import WakeUps
from sipserver.routing import router
from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.message import Request, make_request
from sipserver.sip.responses import local_tag
from sipserver.sip.sdp import SdpError, parse_sdp
from sipserver.sip.sdp_answer import NoAcceptableMedia, answer_sdp
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_machine import ClientTransaction, SendMessage, ServerTransaction
from sipserver.sip.uri import UriError, parse_name_addr
from sipserver.sip.via import via_text

SDP: Final = (("Content-Type", "application/sdp"),)
# An answered call the caller never hangs up (and no answer_hangup_after) ends after a day,
# so that forgotten calls cannot pile up.
LONGEST_CALL: Final = 86400.0


def repeatable_bytes() -> Callable[[int], bytes]:
    """Bytes that look random and repeat from run to run: for tests, never for keys."""
    counter = itertools.count()

    def take(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(str(next(counter)).encode()).digest()
        return out[:n]

    return take


@dataclass(eq=False, slots=True)
class AnsweredCall:
    plan: DialPlanSettings
    number: str
    inbound: ServerContext
    invite_key: tuple[str, ...]
    call_id: str
    our_tag: str
    caller: str  # the INVITE's From: the To of our requests
    us_as_to: str  # the INVITE's To with our tag: the From of our requests
    remote_target: str  # the caller's Contact URI, where our BYE goes
    route_set: tuple[str, ...]  # the INVITE's Record-Route, for our BYE
    media_host: str
    started: float
    invite_tx: ServerTransaction | None  # until the answer
    invite: Request | None  # until the answer
    answer_at: float | None = None  # while ringing
    prepared: tuple[bytes, list[str]] | None = None  # the SDP answer, made when it rang
    answered_at: float | None = None
    ok_data: bytes | None = None  # our last 2xx to an INVITE, resent on UDP until its ACK
    resend_at: float | None = None
    resend_interval: float = 0.0
    give_up_at: float | None = None  # no ACK by then: BYE (RFC 3261 §13.3.1.4)
    hangup_at: float | None = None
    hangup_reason: str = "hangup_timer"
    scheduled: float | None = None  # the wake-up queued for it
    local_cseq: int = 0
    sdp_version: int = 0

    @property
    def deadline(self) -> float | None:
        due = [
            d
            for d in (self.answer_at, self.resend_at, self.give_up_at, self.hangup_at)
            if d is not None
        ]
        return min(due) if due else None

    @property
    def flow(self) -> Flow:
        """Where our messages to the caller go: its connection, or its UDP source."""
        inbound = self.inbound
        return inbound.flow if inbound.flow.reliable else inbound.reply_to


class AnsweringTarget:
    def __init__(
        self,
        table: TransactionTable,
        responder: Responder,
        record: CallRecord,
        events: list[Event],
        entropy: Callable[[int], bytes],
    ) -> None:
        self.table, self.responder, self.record = table, responder, record
        self.events, self.entropy = events, entropy
        self.calls: dict[tuple[str, str], AnsweredCall] = {}  # by (Call-ID, our tag)
        self.ringing: dict[tuple[str, ...], AnsweredCall] = {}  # by INVITE server key
        self.our_thumbprint_sha1: str | None = None
        self.wakeups: WakeUps[AnsweredCall] = WakeUps(
            lambda call: self.calls.get((call.call_id, call.our_tag)) is call,
            lambda: len(self.calls),
        )

    def configure(self, us: OurAddress, timers: TimerValues) -> None:
        self.us, self.timers = us, timers

    # --- a new call ---------------------------------------------------------------------
    def start(
        self,
        tx: ServerTransaction,
        request: Request,
        plan: DialPlanSettings,
        number: str,
        now: float,
    ) -> list[Transmit]:
        if request.method != "INVITE":
            headers = (("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"),)
            if request.method == "OPTIONS":
                return self.responder.answer(tx, 200, "OK", now, headers=headers)
            why = f"The answering target of dial plan {plan.name} takes calls (INVITE) only"
            return self.responder.answer(
                tx, 405, "Method Not Allowed", now, headers=(*headers, self.responder.warning(why))
            )
        context: ServerContext = tx.context
        contact = request.headers.get("Contact")
        try:
            remote_target = parse_name_addr(contact).uri_text if contact else ""
        except UriError:
            remote_target = ""
        call = AnsweredCall(
            plan=plan,
            number=number,
            inbound=context,
            invite_key=context.key,
            call_id=request.call_id or "",
            our_tag=local_tag(request),  # the tag our 487 after a CANCEL carries too
            caller=request.headers.get("From") or "",
            us_as_to=request.headers.get("To") or "",
            remote_target=remote_target,
            route_set=tuple(request.headers.get_all("Record-Route")),
            media_host=self._media_host(context.flow),
            started=now,
            invite_tx=tx,
            invite=request,
        )
        call.us_as_to = f"{call.us_as_to};tag={call.our_tag}"
        answer = self._sdp_answer(tx, request, call, now)
        if isinstance(answer, list):
            return answer  # refused with 488
        self.calls[(call.call_id, call.our_tag)] = call
        self.ringing[call.invite_key] = call
        call.answer_at, call.prepared = now + plan.answer_after, answer
        ringing = self.responder.response(request, 180, "Ringing", self._contact(call))
        out = self.responder.send(tx, ringing, now)
        out += self._answer(call, now) if plan.answer_after == 0 else []
        self.wakeups.schedule(call)
        return out

    def _sdp_answer(
        self, tx: ServerTransaction, request: Request, call: AnsweredCall, now: float
    ) -> tuple[bytes, list[str]] | list[Transmit]:
        """The SDP answer to an INVITE's offer, or the 488 refusing it."""
        try:
            offer = parse_sdp(request.body) if request.body else None
            call.sdp_version += 1
            return answer_sdp(
                offer,
                host=call.media_host,
                session_id=int.from_bytes(call.our_tag.encode()[:6], "big"),
                version=call.sdp_version,
                entropy=self.entropy,
            )
        except (SdpError, NoAcceptableMedia) as exc:
            plan = call.plan
            why = f"The answering target of dial plan {plan.name} cannot accept the offer: {exc}"
            return self.responder.refuse_media(
                tx, why, now, "call_refused_media", dial_plan=plan.name, security=plan.security
            )

    def _answer(self, call: AnsweredCall, now: float) -> list[Transmit]:
        tx, invite, answer = call.invite_tx, call.invite, call.prepared
        assert tx is not None and invite is not None and answer is not None
        body, media = answer
        self.ringing.pop(call.invite_key, None)
        call.answer_at, call.answered_at = None, now
        if call.plan.answer_hangup_after > 0:
            call.hangup_at = now + call.plan.answer_hangup_after
        else:
            call.hangup_at, call.hangup_reason = now + LONGEST_CALL, "longest_call"
        ok = self.responder.response(invite, 200, "OK", (*self._contact(call), *SDP), body)
        out = self.responder.send(tx, ok, now)
        call.invite_tx = call.invite = call.prepared = None
        self._expect_ack(call, out[0].data if out else None, now)
        self.record.count(call.plan, "answered_here", call.inbound.peer)
        inbound = call.inbound
        self.events.append(
            CallAnswered(
                call_id=call.call_id,
                dial_plan=call.plan.name,
                security=call.plan.security,
                number=call.number,
                peer=inbound.peer.name if inbound.peer else None,
                peer_fqdn=inbound.peer.fqdn if inbound.peer else None,
                transport=inbound.flow.transport,
                remote=inbound.flow.remote_text,
                peer_cert=inbound.peer_cert,
                our_thumbprint_sha1=self.our_thumbprint_sha1
                if inbound.flow.transport == "tls"
                else None,
                media=media,
                setup_ms=round((now - call.started) * 1000, 1),
            )
        )
        return out

    def _expect_ack(self, call: AnsweredCall, ok_data: bytes | None, now: float) -> None:
        call.ok_data = ok_data
        call.give_up_at = now + 64 * self.timers.t1
        if not call.inbound.flow.reliable:
            call.resend_interval = self.timers.t1
            call.resend_at = now + call.resend_interval

    # --- the dialog ---------------------------------------------------------------------
    def dialog_of(self, request: Request) -> AnsweredCall | None:
        if not self.calls:  # every ACK and in-dialog request asks: usually there are none
            return None
        to = request.to
        if to is None or not to.tag:
            return None
        return self.calls.get((request.call_id or "", to.tag))

    def ack(self, call: AnsweredCall) -> None:
        call.ok_data = call.resend_at = call.give_up_at = None
        self.wakeups.schedule(call)

    def request(
        self, tx: ServerTransaction, request: Request, call: AnsweredCall, now: float
    ) -> list[Transmit]:
        if request.method == "BYE":
            out = self.responder.answer(tx, 200, "OK", now)
            if call.invite_tx is not None:  # a BYE in the early dialog ends the ringing too
                early = "the caller sent BYE before the answer"
                out += self.responder.answer(
                    call.invite_tx, 487, "Request Terminated", now, log_reason=early
                )
            self._end(call, "caller_bye", now)
            return out
        if request.method not in ("INVITE", "UPDATE") or not request.body:
            return self.responder.answer(tx, 200, "OK", now)
        why = router.in_dialog_media_problem(request, call.plan.security)
        if why is not None:
            refusal = "call_refused_insecure_media"
            return self.responder.refuse_media(tx, why, now, refusal, security=call.plan.security)
        answer = self._sdp_answer(tx, request, call, now)
        if isinstance(answer, list):
            return answer
        headers = (*self._contact(call), *SDP)
        out = self.responder.answer(tx, 200, "OK", now, headers=headers, body=answer[0])
        if request.method == "INVITE":
            self._expect_ack(call, out[0].data if out else None, now)
            self.wakeups.schedule(call)
        return out

    def cancelled(self, invite_key: tuple[str, ...], now: float) -> None:
        """The caller cancelled before our answer (the core answers the 487)."""
        call = self.ringing.pop(invite_key, None)
        if call is not None:
            self._end(call, "cancelled", now)

    def _end(self, call: AnsweredCall, ended_by: str, now: float) -> None:
        self.calls.pop((call.call_id, call.our_tag), None)
        self.record.limits.ended(call.call_id)
        self.ringing.pop(call.invite_key, None)
        duration = round(now - call.answered_at, 1) if call.answered_at is not None else None
        self.events.append(
            AnsweredCallEnded(
                call_id=call.call_id,
                dial_plan=call.plan.name,
                ended_by=ended_by,
                duration_s=duration,
            )
        )

    # --- time ---------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self.wakeups.next_deadline()

    def due(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for call in self.wakeups.due(now):
            if call.answer_at is not None and call.answer_at <= now:
                out += self._answer(call, now)
            elif call.give_up_at is not None and call.give_up_at <= now:
                out += self._hang_up(call, "no_ack", now)
            elif call.resend_at is not None and call.resend_at <= now:
                call.resend_interval = min(call.resend_interval * 2, self.timers.t2)
                call.resend_at = now + call.resend_interval
                if call.ok_data:
                    out.append(Transmit(call.flow, call.ok_data))
            elif call.hangup_at is not None and call.hangup_at <= now:
                out += self._hang_up(call, call.hangup_reason, now)
            self.wakeups.schedule(call)
        return out

    def _hang_up(self, call: AnsweredCall, ended_by: str, now: float) -> list[Transmit]:
        """Our BYE, in the dialog the caller set up (RFC 3261 §15.1.1)."""
        call.local_cseq += 1
        transport = call.inbound.flow.transport
        branch = "z9hG4bK-sipsans" + self.entropy(8).hex()
        headers = [
            ("Via", via_text(self.us.via(transport, branch))),
            *(("Route", route) for route in call.route_set),
            ("Max-Forwards", "70"),
            ("From", call.us_as_to),
            ("To", call.caller),
            ("Call-ID", call.call_id),
            ("CSeq", f"{call.local_cseq} BYE"),
        ]
        bye = make_request(
            "BYE", call.remote_target or f"sip:{call.inbound.flow.remote_text}", headers
        )
        flow = call.flow
        tx, first = ClientTransaction.create(
            bye,
            reliable=flow.reliable,
            now=now,
            timers=self.timers,
            context=ClientContext(None, flow, "bye"),
        )
        self.table.add_client(tx)
        self.table.schedule(tx)
        self._end(call, ended_by, now)
        return [Transmit(flow, item.data) for item in first if isinstance(item, SendMessage)]

    def busy(self) -> int:
        """What a drain waits for: every call we answer until it ends (ringing, or answered
        and not yet hung up), as it waits for a proxied call's BYE."""
        return len(self.calls)

    # --- helpers ------------------------------------------------------------------------
    def _contact(self, call: AnsweredCall) -> tuple[tuple[str, str], ...]:
        transport = call.inbound.flow.transport
        port = self.us.ports[transport]
        uri = f"sip:{call.number}@{self.us.host}:{port};transport={transport}"
        return (("Contact", f"<{uri}>"),)

    def _media_host(self, flow: Flow) -> str:
        """Where our SDP says media goes: the address the caller reached us at."""
        try:
            local = ipaddress.ip_address(flow.local[0])
            remote = ipaddress.ip_address(flow.remote[0])
        except ValueError:
            return self.us.host
        if not local.is_unspecified:
            return str(local)
        if remote.is_loopback:
            return "::1" if remote.version == 6 else "127.0.0.1"
        return self.us.host
