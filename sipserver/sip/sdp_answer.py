"""SDP answers (RFC 3264) for the built-in answering target: one accepted stream per offered
one, pointed at the discard port, SRTP keyed with SDES (RFC 4568) where the offer asks for
it. No media is ever sent; the answer only has to be one a real phone accepts."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Final

from sipserver.sip.sdp import MediaDescription, SessionDescription

DISCARD_PORT: Final = 9  # RFC 863: what is sent here goes nowhere
# SDES crypto suites and the bytes of master key + salt each needs (RFC 4568, RFC 6188, RFC 7714).
KEY_BYTES: Final = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AES_256_CM_HMAC_SHA1_80": 46,
    "AES_256_CM_HMAC_SHA1_32": 46,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}
_MIRROR: Final = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_RTPMAPS: Final = {"0": "PCMU/8000", "8": "PCMA/8000", "101": "telephone-event/8000"}
# What we offer ourselves when an INVITE comes without SDP (then the ACK carries the answer).
_OUR_OFFER: Final = [
    f"m=audio {DISCARD_PORT} RTP/AVP 0 8 101",
    *(f"a=rtpmap:{pt} {codec}" for pt, codec in _RTPMAPS.items()),
    "a=sendrecv",
]


class NoAcceptableMedia(ValueError):
    """No offered stream is one we can answer (e.g. DTLS-SRTP only)."""


def _crypto_line(m: MediaDescription, entropy: Callable[[int], bytes]) -> str | None:
    """Our a=crypto for the first offered suite we know, with a key of our own."""
    for name, value in m.attributes:
        if name != "crypto" or not value:
            continue
        parts = value.split()
        if len(parts) >= 3 and parts[1] in KEY_BYTES:
            key = base64.b64encode(entropy(KEY_BYTES[parts[1]])).decode()
            return f"a=crypto:{parts[0]} {parts[1]} inline:{key}"
    return None


def _answer_stream(
    m: MediaDescription, entropy: Callable[[int], bytes]
) -> tuple[list[str], str | None]:
    """The lines answering one offered stream, and what was wrong when it is refused."""
    first = m.formats[0] if m.formats else "0"
    refused = [f"m={m.media} 0 {m.proto} {first}"]
    if not m.active:
        return refused, "declined by the offer"
    proto = m.proto.upper()
    if proto not in ("RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"):
        return refused, f"{m.proto} is not answered (SDES-keyed or plain RTP only)"
    crypto = None
    if proto in ("RTP/SAVP", "RTP/SAVPF"):
        crypto = _crypto_line(m, entropy)
        if crypto is None:
            return refused, f"{m.proto} without an a=crypto suite we know"
    lines = [f"m={m.media} {DISCARD_PORT} {m.proto} {first}"]
    rtpmap = next(
        (v for n, v in m.attributes if n == "rtpmap" and v and v.split()[0] == first),
        None,
    )
    if rtpmap is None and first in _RTPMAPS:
        rtpmap = f"{first} {_RTPMAPS[first]}"
    if rtpmap is not None:
        lines.append(f"a=rtpmap:{rtpmap}")
    if crypto is not None:
        lines.append(crypto)
    direction = next((_MIRROR[n] for n, _ in m.attributes if n in _MIRROR), "sendrecv")
    lines.append(f"a={direction}")
    return lines, None


def answer_sdp(
    offer: SessionDescription | None,
    *,
    host: str,
    session_id: int,
    version: int,
    entropy: Callable[[int], bytes],
) -> tuple[bytes, list[str]]:
    """The answer to `offer` (or our own offer when there is none) and one line per media
    stream saying what it got. Raises NoAcceptableMedia when no stream is accepted."""
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=sipserver {session_id} {version} IN {family} {host}",
        "s=sipserver answering target",
        f"c=IN {family} {host}",
        "t=0 0",
    ]
    if offer is None:
        return ("\r\n".join(lines + _OUR_OFFER) + "\r\n").encode(), ["audio RTP/AVP (our offer)"]
    summary: list[str] = []
    problems: list[str] = []
    for m in offer.media:
        stream, problem = _answer_stream(m, entropy)
        lines += stream
        if problem is None:
            keyed = any(line.startswith("a=crypto:") for line in stream)
            summary.append(f"{m.media} {m.proto}" + (" with SDES keys" if keyed else ""))
        else:
            problems.append(f"m={m.media} {m.port} {m.proto} (line {m.line_number}): {problem}")
    if not summary:
        raise NoAcceptableMedia("; ".join(problems) or "the offer has no media stream")
    return ("\r\n".join(lines) + "\r\n").encode(), summary
