"""Messages the core cannot take as they are: malformed ones (400 with the reason, or
dropped where RFC 3261 says so), requests from sources that are no peer, streams whose
framing is lost. Also the two Via rules every response depends on (§18.2.1, §18.2.2)."""

from __future__ import annotations

from sipserver.config.choices import UnknownSource
from sipserver.config.schema import Config, PeerSettings
from sipserver.proxy.events import Event, FramingLost, MessageMalformed, UnknownSourceRefused
from sipserver.proxy.responder import Responder
from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.flow import Flow, Transmit
from sipserver.sip.framing import FramingError
from sipserver.sip.message import Message, ParseError, ParseLimits, Request, Response, parse_message
from sipserver.sip.numbers import ascii_int
from sipserver.sip.uri import UriError
from sipserver.sip.via import Via, via_text


class Intake:
    def __init__(self, responder: Responder, events: list[Event]) -> None:
        self.responder = responder
        self.events = events

    def configure(self, config: Config, limits: ParseLimits) -> None:
        self.config, self.limits = config, limits

    def framing_lost(self, error: FramingError, flow: Flow) -> list[Transmit]:
        """The stream cannot be framed any more: answer the offending request if we can
        read it, then close the connection."""
        self.events.append(FramingLost(reason=error.reason, status=error.status))
        if error.head:
            try:
                partial = parse_message(error.head + b"\r\n\r\n", self.limits, stream=False)
            except ParseError as exc:
                partial = exc.partial  # type: ignore[assignment]
            try:
                if (
                    isinstance(partial, Request)
                    and partial.method != "ACK"
                    and partial.top_via is not None
                ):
                    response = self.responder.response(partial, error.status, error.reason)
                    return [Transmit(flow, response.to_bytes(), close_after=True)]
            except (UriError, RemoteProtocolError):
                pass  # too broken to answer (its Via, its CSeq): the connection just closes
        return [Transmit(flow, b"", close_after=True)]

    def malformed(
        self,
        exc: RemoteProtocolError,
        partial: Message | None,
        flow: Flow,
        peer: PeerSettings | None,
    ) -> list[Transmit]:
        def event(kind: str, action: str) -> MessageMalformed:
            return MessageMalformed(
                call_id=_call_id(partial),
                kind=kind,
                action=action,
                reason=exc.reason,
                status=exc.status,
                transport=flow.transport,
                remote=flow.remote_text,
                peer=peer.name if peer else None,
            )

        if isinstance(partial, Response):
            self.events.append(event("response", "dropped"))
            return []
        if not isinstance(partial, Request) or partial.method == "ACK":
            self.events.append(event("request", "dropped"))
            return []
        if peer is None and self.config.server.unknown_source == UnknownSource.DROP:
            self.events.append(event("request", "dropped (unknown source)"))
            return []
        try:
            via = partial.top_via
        except UriError:
            via = None
        if via is None:
            self.events.append(event("request", "dropped (no usable Via)"))
            return []
        self.events.append(event("request", "answered"))
        via = stamp_via(partial, flow)
        response = self.responder.response(partial, exc.status, exc.reason, exc.headers)
        return [Transmit(response_flow(via, flow), response.to_bytes())]

    def unknown_source(self, request: Request, flow: Flow, reply_to: Flow) -> list[Transmit]:
        drop = self.config.server.unknown_source == UnknownSource.DROP
        self.events.append(
            UnknownSourceRefused(
                call_id=request.call_id,
                action="dropped" if drop else "403",
                status=None if drop else 403,
                method=request.method,
                transport=flow.transport,
                remote=flow.remote_text,
            )
        )
        if drop:
            return []
        text = (
            f"Source address {flow.remote[0]} is not an address of any configured gateway or PBX; "
            f"add it to a [[peer]] or call over mutual TLS"
        )
        response = self.responder.response(
            request, 403, "Forbidden", (self.responder.warning(text),), stranger=True
        )
        # A stranger's connection carries nothing we will serve: answer, then close it.
        return [Transmit(reply_to, response.to_bytes(), close_after=flow.reliable)]


def stamp_via(request: Request, flow: Flow) -> Via | None:
    """§18.2.1 received and RFC 3581 rport on the top Via, so every response built from
    this request carries them and goes back to where the request came from. Returns the
    stamped top Via, parsed once for the rest of the request's handling."""
    via = request.top_via
    if via is None:
        return None
    stamped = via.with_received(flow.remote[0], flow.remote[1])
    if stamped is not via:
        request.headers.replace_first_value("Via", via_text(stamped))
    return stamped


def response_flow(via: Via | None, flow: Flow) -> Flow:
    """§18.2.2: streams answer on the connection; UDP answers to the source address and
    the rport (or the Via port, or 5060)."""
    if flow.reliable or via is None:
        return flow
    rport = via.params.get("rport")
    port = ascii_int(rport, 5) if rport else None
    if port is None or not 0 < port < 65536:
        port = via.port or 5060
    return Flow(
        flow.transport, flow.local, (flow.remote[0], port), flow.connection_id, flow.server_name
    )


def _call_id(message: Message | None) -> str | None:
    try:
        return message.call_id if message is not None else None
    except RemoteProtocolError:
        return None
