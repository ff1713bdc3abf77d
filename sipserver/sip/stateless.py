"""Refusing a new INVITE from its bytes alone: what a server that sheds load can afford
for every call it turns away. Only the five headers a response copies (RFC 3261 §8.2.6.2)
are read, the 503 is written straight from them, and its ACK is recognised by our To-tag;
anything unusual (folded or repeated headers, a Via list on one line, a To-tag already
there) is left to the full parser, which answers it the ordinary way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.responses import stable_tag
from sipserver.sip.via import parse_via

# The To-tag of a stateless refusal starts with this: its ACK is known without a parse.
REFUSAL_TAG: Final = "503s-"
_REFUSAL_MARK: Final = b";tag=" + REFUSAL_TAG.encode()
_COPIED: Final = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}


@dataclass(frozen=True, slots=True)
class NewInvite:
    """The headers of an out-of-dialog INVITE that a response copies, as received."""

    vias: tuple[bytes, ...]  # one via-parm per Via line, top first
    from_: bytes
    to: bytes
    call_id: bytes
    cseq: bytes


def read_new_invite(data: bytes) -> NewInvite | None:
    """The copied headers of an INVITE without a To-tag, or None when the message is
    anything else or anything the full parser should look at."""
    if not data.startswith(b"INVITE "):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    if not lines[0].endswith(b" SIP/2.0"):
        return None
    found: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return None  # a folded header
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        canonical = _COPIED.get(name.strip().lower())
        if canonical is not None:
            found.setdefault(canonical, []).append(value.strip())
    vias = found.get(b"Via", [])
    singles = [found.get(name, []) for name in (b"From", b"To", b"Call-ID", b"CSeq")]
    if not vias or any(b"," in via for via in vias) or any(len(v) != 1 for v in singles):
        return None
    (from_,), (to,), (call_id,), (cseq,) = singles
    if b"tag=" in to.lower() or cseq.split()[-1:] != [b"INVITE"]:
        return None
    return NewInvite(tuple(vias), from_, to, call_id, cseq)


def refusal(
    invite: NewInvite,
    source: tuple[str, int],
    status_line: bytes,
    headers: tuple[tuple[str, str], ...],
) -> bytes | None:
    """The response to `invite` (received from `source`): its top Via stamped (§18.2.1,
    RFC 3581), a To-tag of ours that is the same for a retransmission, `headers` after the
    copied ones. None when the top Via does not parse."""
    try:
        top = parse_via(invite.vias[0].decode("utf-8", "surrogateescape"))
    except (RemoteProtocolError, ValueError):
        return None
    stamped = str(top.with_received(*source)).encode("utf-8", "surrogateescape")
    seed = b"|".join((invite.call_id, invite.from_, invite.vias[0]))
    tag = (REFUSAL_TAG + stable_tag(seed)).encode()
    parts = [status_line, b"Via: " + stamped]
    parts += [b"Via: " + via for via in invite.vias[1:]]
    parts += [
        b"From: " + invite.from_,
        b"To: " + invite.to + b";tag=" + tag,
        b"Call-ID: " + invite.call_id,
        b"CSeq: " + invite.cseq,
    ]
    parts += [f"{name}: {value}".encode() for name, value in headers]
    parts.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(parts)


def acks_a_refusal(data: bytes) -> bool:
    """Whether this is the ACK for one of our stateless refusals (its To-tag is ours)."""
    if not data.startswith(b"ACK ") or _REFUSAL_MARK not in data:
        return False
    end = data.find(b"\r\n\r\n")
    for line in data[: end if end >= 0 else len(data)].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if _COPIED.get(name.strip().lower()) == b"To":
            return _REFUSAL_MARK in value.replace(b" ", b"")
    return False
