"""Responses we send through server transactions: ours (with a Server header and, for
refusals, a Warning saying why) and relayed ones, each answer recorded as an event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sipserver.proxy.events import Answered, CallRefused, Event, TransactionTimedOut
from sipserver.proxy.live_transactions import ServerContext, TransactionTable
from sipserver.sip.flow import Transmit
from sipserver.sip.message import Request, Response
from sipserver.sip.responses import make_response, warning_value
from sipserver.sip.transaction_machine import (
    Output,
    SendMessage,
    ServerTransaction,
    Terminated,
    TimedOut,
)

Headers = tuple[tuple[str, str], ...]


class Responder:
    def __init__(self, table: TransactionTable, events: list[Event], agent: str) -> None:
        self.table = table
        self.events = events
        self.agent = agent  # our FQDN, the agent of our Warning headers
        self.server_header: str | None = "sipserver"  # server.user_agent; None: none

    def response(
        self,
        request: Request,
        status: int,
        reason: str,
        headers: Headers = (),
        body: bytes = b"",
        *,
        stranger: bool = False,
    ) -> Response:
        """`stranger`: for a source we do not serve, the shortest answer (no Server)."""
        response = make_response(request, status, reason, headers, body)
        if self.server_header and not stranger:
            response.headers.add("Server", self.server_header)
        return response

    def warning(self, text: str) -> tuple[str, str]:
        return ("Warning", warning_value(self.agent, text))

    def send(self, tx: ServerTransaction, response: Response, now: float) -> list[Transmit]:
        """Send a response (ours or relayed from downstream) through a server transaction."""
        out = self.drive(tx, tx.send_response(response, now))
        if response.status >= 200:
            tx.context.request = None
        return out

    def answer(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str,
        now: float,
        *,
        headers: Headers = (),
        body: bytes = b"",
        log_reason: str | None = None,
        event: type[Answered] = Answered,
        **event_fields: Any,
    ) -> list[Transmit]:
        """Answer a request ourselves, and record why."""
        context: ServerContext = tx.context
        flow, peer = context.flow, context.peer
        assert context.request is not None, "the final response was already sent"
        self.events.append(
            event(
                call_id=context.call_id,
                method=context.method,
                status=status,
                reason=log_reason or reason,
                transport=flow.transport,
                remote=flow.remote_text,
                peer=peer.name if peer else None,
                peer_fqdn=peer.fqdn if peer else None,
                **event_fields,
            )
        )
        self.table.server.setdefault(context.key, tx)
        response = self.response(context.request, status, reason, headers, body)
        return self.send(tx, response, now)

    def unavailable(
        self,
        tx: ServerTransaction,
        why: str,
        retry_after: int,
        now: float,
        event: type[Answered] = Answered,
    ) -> list[Transmit]:
        """503 with Retry-After (RFC 3261 §21.5.4): come back later, or elsewhere."""
        return self.answer(
            tx,
            503,
            "Service Unavailable",
            now,
            headers=(("Retry-After", str(retry_after)), self.warning(why)),
            log_reason=why.lower(),
            event=event,
        )

    def refuse_media(
        self, tx: ServerTransaction, why: str, now: float, refusal: str, **fields: Any
    ) -> list[Transmit]:
        """488 for an SDP offer we will not take, with the Warning and log line saying why."""
        return self.answer(
            tx,
            488,
            "Not Acceptable Here",
            now,
            headers=(self.warning(why),),
            log_reason=why,
            event=CallRefused,
            refusal=refusal,
            **fields,
        )

    def drive(self, tx: ServerTransaction, outputs: Sequence[Output]) -> list[Transmit]:
        context: ServerContext = tx.context
        out: list[Transmit] = []
        for item in outputs:
            if isinstance(item, SendMessage):
                out.append(Transmit(context.reply_to, item.data))
            elif isinstance(item, TimedOut):
                self.events.append(
                    TransactionTimedOut(
                        call_id=context.call_id,
                        timer=item.timer,
                        method=context.method,
                        remote=context.flow.remote_text,
                    )
                )
            elif isinstance(item, Terminated):
                self.table.server.pop(context.key, None)
        if not self.table.settle(tx):
            self.table.schedule(tx)
        return out
