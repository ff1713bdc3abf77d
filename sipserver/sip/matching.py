"""Which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3)."""

from __future__ import annotations

import hashlib

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.message import Request, Response
from sipserver.sip.via import BRANCH_COOKIE, Via


def server_key(request: Request, top_via: Via | None = None) -> tuple[str, ...]:
    """The key that matches a request to a server transaction. ACK matches the INVITE.
    `top_via` saves parsing it again when the caller already has it."""
    via = top_via or request.top_via
    assert via is not None
    method = "INVITE" if request.method == "ACK" else request.method
    if via.is_rfc3261_branch and via.branch:
        return ("3261", via.branch, via.sent_by.lower(), method)
    # RFC 2543 peers: match on the dialog-ish fields and the top Via (§17.2.3 end).
    number, _ = request.cseq
    from_ = request.from_
    to = request.to
    to_tag = to.tag if (to and request.method != "ACK") else None
    return (
        "2543",
        request.uri,
        to_tag or "",
        from_.tag if from_ and from_.tag else "",
        request.call_id or "",
        str(number),
        str(via),
        method,
    )


def client_key(message: Request | Response) -> tuple[str, str]:
    via = message.top_via
    if via is None:
        raise RemoteProtocolError("Missing Via")
    _, method = message.cseq
    if method == "ACK":
        method = "INVITE"
    return (via.branch or "", method)


def new_branch(seed: str) -> str:
    return BRANCH_COOKIE + hashlib.sha1(seed.encode()).hexdigest()[:16]
