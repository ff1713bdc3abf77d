"""Routing decisions for requests that are not for the server itself.

The foundation has no dial plans yet, so every such request is answered 404 with a
Warning that names the number and the peer; dial-plan routing replaces `route()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipserver.config import PeerSettings
from sipserver.sip.message import Request
from sipserver.sip.uri import parse_uri


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str
    warning: str  # text of the Warning: 399 header and of the log event
    log_event: str = "call_refused"


Decision = Reject


def route(request: Request, peer: PeerSettings | None, transport: str) -> Decision:
    number = parse_uri(request.uri).user_unescaped or "(no user part)"
    peer_name = f"{peer.name} ({peer.fqdn})" if peer else "unknown peer"
    return Reject(
        404, "Not Found", f"No dial plan for number {number} from peer {peer_name}", "no_dial_plan"
    )
