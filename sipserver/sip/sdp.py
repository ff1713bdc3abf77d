"""Just enough SDP (RFC 8866) to judge media security: media lines and their attributes."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipserver.sip.errors import RemoteProtocolError
from sipserver.sip.numbers import ascii_int


@dataclass(frozen=True, slots=True)
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    attributes: tuple[tuple[str, str | None], ...] = ()
    line_number: int = 0  # 1-based line of the m= line in the body

    def has_attribute(self, name: str) -> bool:
        return any(attr == name for attr, _ in self.attributes)

    @property
    def active(self) -> bool:
        return self.port != 0


@dataclass(frozen=True, slots=True)
class SessionDescription:
    session_attributes: tuple[tuple[str, str | None], ...] = ()
    media: tuple[MediaDescription, ...] = field(default_factory=tuple)


class SdpError(RemoteProtocolError, ValueError):
    """A session description that cannot be read; an offer like that gets 488."""

    status = 488


def parse_sdp(body: bytes) -> SessionDescription:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError("SDP is not UTF-8") from exc
    session_attrs: list[tuple[str, str | None]] = []
    media: list[MediaDescription] = []
    media_attrs: list[tuple[str, str | None]] = []

    def close_media() -> None:
        if media:
            last = media.pop()
            media.append(
                MediaDescription(
                    last.media,
                    last.port,
                    last.proto,
                    last.formats,
                    tuple(media_attrs),
                    last.line_number,
                )
            )

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"malformed SDP line {number}")
        kind, value = line[0], line[2:]
        if kind == "m":
            close_media()
            media_attrs = []
            parts = value.split()
            if len(parts) < 3:
                raise SdpError(f"malformed m= line {number}")
            port = ascii_int(parts[1].split("/")[0], 5)
            if port is None:
                raise SdpError(f"malformed port in m= line {number}")
            media.append(MediaDescription(parts[0], port, parts[2], tuple(parts[3:]), (), number))
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            (media_attrs if media else session_attrs).append((name, attr_value if sep else None))
    close_media()
    return SessionDescription(tuple(session_attrs), tuple(media))


def srtp_violations(sdp: SessionDescription) -> list[str]:
    """Why each active media stream is not SRTP, empty when all are: RTP/SAVP(F) needs an
    a=crypto line (RFC 4568); UDP/TLS/RTP/SAVP(F) needs a=fingerprint (RFC 5763)."""
    session_fingerprint = any(name == "fingerprint" for name, _ in sdp.session_attributes)
    problems: list[str] = []
    for m in sdp.media:
        if not m.active:
            continue
        proto = m.proto.upper()
        where = f"m={m.media} {m.port} {m.proto} (line {m.line_number})"
        if proto in ("RTP/SAVP", "RTP/SAVPF"):
            if not m.has_attribute("crypto"):
                problems.append(f"{where} has no a=crypto")
        elif proto in ("UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF"):
            if not (m.has_attribute("fingerprint") or session_fingerprint):
                problems.append(f"{where} has no a=fingerprint")
        else:
            problems.append(f"{where} is not SRTP")
    return problems
