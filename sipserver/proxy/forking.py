"""Calls forked in parallel: a softphone that registered several flows (or several
softphones sharing a number) ring at once; the first 2xx wins and the other branches are
cancelled; when every branch has failed the caller gets the best answer (RFC 3261 §16.7).
The Forwarder owns one `Branches` and is its `CallLeg`: it sends each branch and relays
what comes back."""

from __future__ import annotations

from typing import Protocol

from sipserver.config.schema import PeerSettings
from sipserver.proxy.calls import Branch, ProxyCall, best_response
from sipserver.proxy.events import Event
from sipserver.proxy.registrar import Registrar
from sipserver.proxy.responder import Headers, Responder
from sipserver.proxy.shared_bindings import BindingQueries, Sharing
from sipserver.proxy.targets import note_failure
from sipserver.sip import proxy_ops
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Response
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    Output,
    ResponseReceived,
    ServerTransaction,
    TimedOut,
)


class CallLeg(Protocol):
    """What the branches ask of the Forwarder that owns them."""

    timers: TimerValues
    sharing: Sharing | None

    def send_attempt(
        self,
        call: ProxyCall,
        target: PeerSettings | None,
        transport: Transport,
        uri: str,
        flow: Flow,
        now: float,
    ) -> list[Transmit]: ...

    def fail(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        warning: str,
        now: float,
        headers: Headers = (),
    ) -> list[Transmit]: ...

    def relay_final(self, call: ProxyCall, response: Response, now: float) -> list[Transmit]: ...

    def relay_late_2xx(
        self, server_tx: ServerTransaction, response: Response, now: float
    ) -> list[Transmit]: ...

    def keep_for_2xx_retransmissions(self, call: ProxyCall, tx: ClientTransaction) -> None: ...

    def cancel_on(
        self, call: ProxyCall, invite_tx: ClientTransaction, flow: Flow, now: float
    ) -> list[Transmit]: ...

    def check_answer_media(self, call: ProxyCall, response: Response) -> None: ...


class Branches:
    def __init__(
        self,
        leg: CallLeg,
        registrar: Registrar,
        responder: Responder,
        events: list[Event],
        queries: BindingQueries[ProxyCall],
    ) -> None:
        self.leg = leg
        self.registrar = registrar
        self.responder = responder
        self.events = events
        self.queries = queries

    # --- forking ----------------------------------------------------------------------
    def fork(self, call: ProxyCall, now: float) -> list[Transmit]:
        """Every registered flow of the softphones that own the number rings at once; the
        first 2xx wins and the other branches are cancelled. Flows that other processes of
        ours hold ring through them: one branch per process, which rings its own flows."""
        number = call.number or ""
        sharing = self.leg.sharing
        if sharing is not None and call.remote is None and not call.handed_over:
            self.queries.wait(number, call)  # the shell asks the store; resume() goes on
            return []
        phones, call.targets = call.targets, []
        usable: list[tuple[PeerSettings, Flow, str]] = []
        elsewhere: dict[tuple[str, int], None] = {}  # each other process's sibling hop, once
        ours = sharing.owner if sharing is not None else None
        for phone in phones:
            bindings = self.registrar.bindings(phone, number)
            remote = [
                r for r in call.remote or () if r.binding.peer == phone.name and r.owner != ours
            ]
            if not bindings and not remote:
                call.attempts.append(f"{phone.name}: {number} not registered")
            usable += [
                (phone, b.flow, b.contact)
                for b in bindings
                if self._secure_enough(call, phone, b.flow.transport)
            ]
            for r in remote:
                if self._secure_enough(call, phone, r.binding.transport):
                    elsewhere[r.hop] = None
        if not usable and not elsewhere:
            why = f"Softphone for {number} unavailable: " + "; ".join(call.attempts)
            return self.leg.fail(call.server_tx, 480, "Temporarily Unavailable", why, now)
        call.branches = []
        out: list[Transmit] = []
        for phone, flow, contact in usable:
            out += self.leg.send_attempt(call, phone, flow.transport, contact, flow, now)
        if sharing is not None:
            sibling = sharing.sibling
            for hop in elsewhere:
                flow = Flow(Transport.TLS, ("", 0), hop, None, server_name=sibling.fqdn)
                out += self.leg.send_attempt(
                    call, sibling, Transport.TLS, call.request.uri, flow, now
                )
        return out

    def _secure_enough(self, call: ProxyCall, phone: PeerSettings, transport: Transport) -> bool:
        """A flow the call's dial plan allows; else why not, among the call's attempts."""
        plan = call.plan
        if plan is None or not plan.requires_tls or transport == Transport.TLS:
            return True
        call.attempts.append(
            f"{phone.name}: registered over {transport.upper()}, but dial plan "
            f"{plan.name} is {plan.security} and needs a TLS registration"
        )
        return False

    def _on_branch_response(
        self, call: ProxyCall, branch: Branch, response: Response, now: float
    ) -> list[Transmit]:
        status = response.status
        if 200 <= status < 300:
            self.leg.keep_for_2xx_retransmissions(call, branch.tx)
            if call.done:
                return self.leg.relay_late_2xx(call.server_tx, response, now)
            branch.final = status
            call.target, call.target_flow = branch.target, branch.flow
            out = self.cancel_all(call, now)
            return out + self.leg.relay_final(call, response, now)
        if status == 100 or not branch.pending:
            return []
        if status < 200:
            branch.provisional = True
            if call.done or call.cancelled:
                return self._cancel_branch(call, branch, now)
            call.provisional = True
            self.leg.check_answer_media(call, response)
            return self.responder.send(call.server_tx, proxy_ops.strip_top_via(response), now)
        branch.final, branch.response = status, response
        return self._branches_settled(call, now)

    def failed(
        self, call: ProxyCall, branch: Branch, status: int, reason: str, now: float
    ) -> list[Transmit]:
        if not branch.pending:
            return []
        branch.final, branch.failure = status, reason
        note_failure(
            self.events, call, f"{branch.target.name} at {branch.flow.remote_text}", reason
        )
        return self._branches_settled(call, now)

    def _branches_settled(self, call: ProxyCall, now: float) -> list[Transmit]:
        """Once no branch is pending, the caller gets the best answer they gave."""
        branches = call.branches or []
        if call.done or any(b.pending for b in branches):
            return []
        best = best_response(branches)
        if best is not None and best.response is not None:
            call.target, call.target_flow = best.target, best.flow
            return self.leg.relay_final(call, best.response, now)
        if call.cancelled:
            return self.leg.fail(call.server_tx, 487, "Request Terminated", "cancelled", now)
        why = "Every registered flow failed: " + "; ".join(call.attempts)
        if all(b.final == 408 for b in branches):
            return self.leg.fail(call.server_tx, 408, "Request Timeout", why, now)
        return self.leg.fail(call.server_tx, 480, "Temporarily Unavailable", why, now)

    def cancel_all(self, call: ProxyCall, now: float) -> list[Transmit]:
        """Cancel the branches still ringing; one that has not rung yet is cancelled when
        its first provisional response comes (§9.1)."""
        out: list[Transmit] = []
        for branch in call.branches or ():
            if branch.pending and branch.provisional:
                out += self._cancel_branch(call, branch, now)
        return out

    def _cancel_branch(self, call: ProxyCall, branch: Branch, now: float) -> list[Transmit]:
        if branch.cancel_sent:
            return []
        branch.cancel_sent = True
        return self.leg.cancel_on(call, branch.tx, branch.flow, now)

    def branch_of(self, call: ProxyCall, tx: ClientTransaction) -> Branch | None:
        return next((b for b in call.branches or () if b.tx is tx), None)

    def on_output(
        self, call: ProxyCall, tx: ClientTransaction, item: Output, now: float
    ) -> list[Transmit]:
        branch = self.branch_of(call, tx)
        if branch is None:
            return []
        if isinstance(item, ResponseReceived):
            return self._on_branch_response(call, branch, item.response, now)
        if isinstance(item, TimedOut) and item.timer == "C":
            out = self._cancel_branch(call, branch, now) if branch.provisional else []
            seconds = f"{self.leg.timers.timer_c:g}"
            return out + self.failed(call, branch, 408, f"no answer within {seconds} s", now)
        if isinstance(item, TimedOut):
            return self.failed(call, branch, 408, "timeout", now)
        return []
