"""Message edits a proxy makes (RFC 3261 §16.6, §16.7, §9.1; RFC 5658 double
Record-Route). Pure functions over parsed messages."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sipserver.sip.flow import Transport, transport_named
from sipserver.sip.header_fields import KEY, NAME, VALUE, make_header
from sipserver.sip.headers import split_list
from sipserver.sip.memo import Memo
from sipserver.sip.message import Headers, Request, Response
from sipserver.sip.numbers import ascii_int
from sipserver.sip.uri import SipUri, UriError, parse_name_addr, parse_uri
from sipserver.sip.via import BRANCH_COOKIE, Via, parse_via, via_text

BRANCH_PREFIX: Final = BRANCH_COOKIE + "-sips"  # marks the Vias we add, for loop detection


@dataclass(slots=True, unsafe_hash=True, init=False)
class Hop:
    """Our address as one leg sees it: used for Via and Record-Route. Immutable, as Via is
    (see there why the fields are Final and __init__ is written out)."""

    host: Final[str]  # our FQDN
    port: Final[int]
    transport: Final[str]  # udp | tcp | tls
    peer: Final[str | None]  # the allow-listed peer on this leg, so in-dialog requests find it
    # The dial plan's mode when in-dialog requests must be held to it too (secured: SRTP
    # offers only). Carried in our Record-Route, so it needs no state of ours.
    security: Final[str | None]
    # The connection a softphone opened, so that in-dialog requests return over that very
    # flow (RFC 5626 §5.3: the edge proxy's flow token in its Record-Route).
    flow: Final[int | None]

    def __init__(
        self,
        host: str,
        port: int,
        transport: str,
        peer: str | None = None,
        security: str | None = None,
        flow: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.transport = transport
        self.peer = peer
        self.security = security
        self.flow = flow

    def uri(self) -> str:
        peer = f";peer={self.peer}" if self.peer else ""
        security = f";sec={self.security}" if self.security else ""
        flow = f";flow={self.flow}" if self.flow is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"<sip:{host}:{self.port};transport={self.transport};lr{peer}{security}{flow}>"


def branch_for(request: Request, attempt: int) -> str:
    """A branch that is unique per forwarded attempt and carries a hash of the
    Request-URI, so that a request coming back to us unchanged is recognised (§16.3.4)."""
    via = request.headers.get_all("Via")
    seed = "|".join([via[0] if via else "", request.call_id or "", str(request.cseq[0])])
    call_part = hashlib.sha1(seed.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{BRANCH_PREFIX}{call_part}{_uri_hash(request.uri)}{attempt}"


def _uri_hash(uri: str) -> str:
    return _URI_HASHES.get(uri)


def _hash_uri(uri: str) -> str:
    return hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:6]


_URI_HASHES: Final = Memo(_hash_uri, 1024)  # a few Request-URIs carry most calls; SHA-1 is not free


def is_loop(request: Request, our_host: str) -> bool:
    """One of our Vias is in the request and it was forwarded for this same Request-URI."""
    for value in request.headers.get_all("Via"):
        try:
            via = parse_via(value)
        except UriError:
            continue  # only the top Via is checked on arrival; a bad lower one is not ours
        branch = via.branch or ""
        if (
            via.host == our_host
            and branch.startswith(BRANCH_PREFIX)
            and branch[len(BRANCH_PREFIX) + 12 :].startswith(_uri_hash(request.uri))
        ):
            return True
    return False


def forward_request(
    request: Request,
    *,
    request_uri: str,
    via: Via,
    record_route: tuple[Hop, ...] = (),
    strip: tuple[str, ...] = (),
    add: tuple[tuple[str, str], ...] = (),
    route: str | None = None,
) -> Request:
    """The copy we send on: new Request-URI, Max-Forwards decremented, our Via on top,
    Record-Route(s) on top, `strip` headers removed (e.g. a forged identity header),
    `add` headers appended, `route` as the first Route. Every other header passes through
    byte for byte."""
    headers = request.headers.copy()
    for name in strip:
        headers.remove(name)
    max_forwards = request.headers.get("Max-Forwards")
    hops = ascii_int(max_forwards.strip(), 3) if max_forwards else None
    remaining = 70 if hops is None else hops - 1
    headers.set("Max-Forwards", str(remaining))
    for hop in reversed(record_route):
        headers.add_first("Record-Route", hop.uri())
    headers.add_first("Via", via_text(via))
    if route is not None:
        headers.add_first("Route", route)
    for name, value in add:
        headers.add(name, value)
    return Request(headers, request.body, method=request.method, uri=request_uri)


def strip_top_via(response: Response) -> Response:
    """The response as it goes upstream: without the Via we added."""
    headers = response.headers.copy()
    items = list(headers)
    for index, header in enumerate(items):
        if header[KEY] == "via":
            values = split_list(header[VALUE])
            if len(values) > 1:
                items[index] = make_header(header[NAME], ", ".join(values[1:]))
            else:
                del items[index]
            break
    return Response(Headers(items), response.body, status=response.status, reason=response.reason)


def build_cancel(forwarded_invite: Request) -> Request:
    """§9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via (so the same
    branch) as the INVITE we sent, and its Route headers."""
    number, _ = forwarded_invite.cseq
    items = [make_header("Via", forwarded_invite.headers.get_all("Via")[0])]
    for header in forwarded_invite.headers:
        if header[KEY] in ("from", "to", "call-id", "route", "max-forwards"):
            items.append(header)
    items.append(make_header("CSeq", f"{number} CANCEL"))
    return Request(Headers(items), b"", method="CANCEL", uri=forwarded_invite.uri)


def retarget(uri_text: str, host: str, port: int | None, transport: str) -> str:
    """The Request-URI sent to a target: same user, the target's FQDN, port (none for a
    target found through SRV, so the next hop locates it the same way) and transport."""
    uri = parse_uri(uri_text)
    params = {k: v for k, v in uri.params.items() if k not in ("transport", "maddr")}
    if transport != "udp":
        params["transport"] = transport
    return str(SipUri("sip", host, uri.user, None, port, params))


@dataclass(slots=True, unsafe_hash=True, init=False)
class NextHop:
    """Immutable, as Via is (see there why the fields are Final and __init__ written out)."""

    uri: Final[SipUri]
    transport: Final[Transport]  # what the route we popped says to use; else the URI's
    peer: Final[str | None]  # the peer our popped route names
    security: Final[str | None]  # the dial plan mode our popped route carries (sec=)
    flow: Final[int | None]  # the connection our popped route names (flow=)

    def __init__(
        self,
        uri: SipUri,
        transport: Transport,
        peer: str | None,
        security: str | None = None,
        flow: int | None = None,
    ) -> None:
        self.uri = uri
        self.transport = transport
        self.peer = peer
        self.security = security
        self.flow = flow


def pop_our_routes(
    request: Request, is_ours: Callable[[SipUri], bool]
) -> tuple[Request, NextHop | None, bool]:
    """Remove our own Route entries from the top (§16.4, up to two with double
    Record-Route). Returns the request, the next hop (next Route or the Request-URI) and
    whether any of ours was popped."""
    routes = request.headers.get_all("Route")
    popped_transport: str | None = None
    popped_peer: str | None = None
    popped_security: str | None = None
    popped_flow: str | None = None
    popped = 0
    while popped < len(routes) and popped < 2:
        try:
            uri = parse_name_addr(routes[popped]).uri
        except UriError:
            break
        if not is_ours(uri):
            break
        popped_transport = uri.transport or popped_transport
        popped_peer = uri.params.get("peer") or popped_peer
        popped_security = uri.params.get("sec") or popped_security
        popped_flow = uri.params.get("flow")  # the leg the request goes on: the last popped
        popped += 1
    if popped:
        headers = request.headers.copy()
        headers.remove("Route")
        for value in routes[popped:]:
            headers.add("Route", value)
        request = Request(headers, request.body, method=request.method, uri=request.uri)
    rest = routes[popped:]
    try:
        target = parse_name_addr(rest[0]).uri if rest else parse_uri(request.uri)
    except UriError:
        return request, None, bool(popped)
    transport = transport_named((popped_transport or target.transport or "udp").lower())
    if transport is None:
        return request, None, bool(popped)  # a transport we do not speak
    flow = ascii_int(popped_flow, 12) if popped_flow else None
    hop = NextHop(target, transport, popped_peer, popped_security, flow)
    return request, hop, bool(popped)


def build_options(
    target_uri: str, to_host: str, our: Hop, branch: str, call_id: str, cseq: int
) -> Request:
    """An OPTIONS ping to a target (Teams Direct Routing and most SBCs expect them)."""
    items = [
        make_header(
            "Via", f"SIP/2.0/{our.transport.upper()} {our.host}:{our.port};branch={branch};rport"
        ),
        make_header("Max-Forwards", "70"),
        make_header("From", f"<sip:{our.host}>;tag={call_id[:10]}"),
        make_header("To", f"<sip:{to_host}>"),
        make_header("Call-ID", call_id),
        make_header("CSeq", f"{cseq} OPTIONS"),
        make_header("Accept", "application/sdp"),
    ]
    return Request(Headers(items), b"", method="OPTIONS", uri=target_uri)
