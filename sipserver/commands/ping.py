"""`sipserver ping`: our Test-UMConnectivity -Secured. Sends OPTIONS and reports the
status, the round trip and the far end's certificate; on failure, one line saying why."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field

from cryptography import x509

from sipserver.errors import SipServerError
from sipserver.pki.certinfo import CertInfo, describe
from sipserver.pki.identity import covers
from sipserver.sip.framing import PING, StreamFramer
from sipserver.sip.message import ParseError, Response, parse_message
from sipserver.sip.uri import UriError, parse_uri


class PingFailed(SipServerError):
    """The one-line explanation of why the ping did not get an answer."""


@dataclass
class PingResult:
    status: int
    reason: str
    rtt_ms: float
    certificate: CertInfo | None = None
    server: str | None = None
    notes: list[str] = field(default_factory=list)
    warning: str | None = None  # the response's Warning header: why it was refused


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    transport: str  # udp | tcp | tls
    uri: str


def parse_target(text: str, transport: str | None) -> Target:
    if not text.startswith(("sip:", "sips:")):
        text = f"sip:{text}"
    try:
        uri = parse_uri(text)
    except UriError as exc:
        raise PingFailed(f"not a SIP URI: {exc}") from exc
    chosen = transport or ("tls" if uri.scheme == "sips" else uri.transport or "udp")
    if chosen not in ("udp", "tcp", "tls"):
        raise PingFailed(f"unknown transport {chosen!r}")
    port = uri.port or (5061 if chosen == "tls" else 5060)
    return Target(uri.host, port, chosen, str(uri))


def _options(target: Target, local: tuple[str, int]) -> bytes:
    host = f"[{local[0]}]" if ":" in local[0] else local[0]
    call_id = uuid.uuid4().hex
    return (
        f"OPTIONS {target.uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{target.transport.upper()} {host}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:ping@{host}>;tag={call_id[:10]}\r\nTo: <{target.uri}>\r\n"
        f"Call-ID: {call_id}@sipserver-ping\r\nCSeq: 1 OPTIONS\r\nUser-Agent: sipserver-ping\r\n"
        "Accept: application/sdp\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _final(data: bytes) -> Response | None:
    try:
        message = parse_message(data)
    except ParseError:
        return None
    return message if isinstance(message, Response) and message.status >= 200 else None


def ping(
    target: Target,
    *,
    timeout: float = 5.0,
    cert: str | None = None,
    key: str | None = None,
    ca: str | None = None,
    server_name: str | None = None,
) -> PingResult:
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    context = _tls_context(cert, key, ca) if target.transport == "tls" else None
    started = time.monotonic()
    if target.transport == "udp":
        return _ping_udp(target, family, timeout, started)
    try:
        raw = socket.create_connection((target.host, target.port), timeout=timeout)
    except ConnectionRefusedError as exc:
        raise PingFailed(
            f"connection refused by {target.host}:{target.port}: nothing listens there"
        ) from exc
    except TimeoutError as exc:
        raise PingFailed(
            f"no TCP connection to {target.host}:{target.port} within {timeout:g} s"
        ) from exc
    except OSError as exc:
        raise PingFailed(
            f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"
        ) from exc
    with raw:
        raw.settimeout(timeout)
        if target.transport == "tcp":
            return _exchange(raw, target, started, timeout, None)
        assert context is not None
        return _ping_tls(raw, target, started, timeout, context, ca, server_name or target.host)


def _ping_udp(target: Target, family: int, timeout: float, started: float) -> PingResult:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((target.host, target.port))
        data = _options(target, sock.getsockname()[:2])
        deadline = started + timeout
        interval = 0.5
        while time.monotonic() < deadline:
            sock.send(data)
            sock.settimeout(min(interval, max(0.01, deadline - time.monotonic())))
            try:
                while True:
                    reply = sock.recv(65535)
                    response = _final(reply)
                    if response is not None:
                        return _result(response, started)
            except TimeoutError:
                interval = min(interval * 2, 4.0)
            except ConnectionRefusedError as exc:
                raise PingFailed(
                    f"connection refused by {target.host}:{target.port} (ICMP port unreachable)"
                ) from exc
    raise PingFailed(f"no answer from {target.host}:{target.port} over UDP within {timeout:g} s")


def _exchange(
    sock: socket.socket | ssl.SSLSocket,
    target: Target,
    started: float,
    timeout: float,
    certificate: CertInfo | None,
) -> PingResult:
    framer = StreamFramer()
    try:
        sock.sendall(_options(target, sock.getsockname()[:2]))
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                if certificate is not None:
                    raise PingFailed(
                        "the server closed the TLS connection without answering: it accepted the "
                        "handshake but not our certificate's name (not on its allow-list?)"
                    )
                raise PingFailed("the far end closed the connection without answering")
            for item in framer.feed(chunk):
                if item is PING or not isinstance(item, bytes):
                    continue
                response = _final(item)
                if response is not None:
                    result = _result(response, started)
                    result.certificate = certificate
                    return result
    except TimeoutError as exc:
        raise PingFailed(f"no answer within {timeout:g} s") from exc
    except ssl.SSLError as exc:
        raise PingFailed(_explain_tls(exc)) from exc
    except OSError as exc:  # reset, broken pipe: the far end dropped us
        raise PingFailed(
            f"the far end reset the connection ({exc.strerror or exc}): it may refuse this "
            "address or be at its connection limit (check its log)"
        ) from exc


def _load_problem(exc: BaseException, key_expected_inside: bool = False) -> str:
    """Why a certificate, key or CA file could not be used, in words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = str(exc).lower()
    if "pem lib" in text or "no start line" in text or "key values mismatch" in text:
        if "key values mismatch" in text:
            return "the key does not belong to the certificate"
        if key_expected_inside:
            return "no private key in it (append the key, or pass --key)"
        return "not a PEM certificate and key that belong together"
    return str(exc)


def _tls_context(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext:
    """Our side of the handshake, built before we connect: a file we cannot use is said
    in one line, whether or not the server is there."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the SIP identity (RFC 5922) is checked below
    if ca:
        try:
            context.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise PingFailed(f"cannot use --ca {ca}: {_load_problem(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            which = f"--cert {cert}" + (f" with --key {key}" if key else "")
            raise PingFailed(f"cannot use {which}: {_load_problem(exc, key is None)}") from exc
    return context


def _ping_tls(
    raw: socket.socket,
    target: Target,
    started: float,
    timeout: float,
    context: ssl.SSLContext,
    ca: str | None,
    server_name: str,
) -> PingResult:
    try:
        tls = context.wrap_socket(raw, server_hostname=server_name)
    except ssl.SSLCertVerificationError as exc:
        raise PingFailed(
            f"the server's certificate is not trusted by {ca}: {exc.verify_message}"
        ) from exc
    except ssl.SSLError as exc:
        raise PingFailed(_explain_tls(exc)) from exc
    except TimeoutError as exc:
        raise PingFailed(f"TLS handshake did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise PingFailed(
            f"the server dropped the connection during the TLS handshake ({exc.strerror or exc}): "
            "it may be at its connection limit or refuse this address (check its log)"
        ) from exc
    with tls:
        der = tls.getpeercert(binary_form=True)
        info = describe(x509.load_der_x509_certificate(der)) if der else None
        notes: list[str] = []
        if info is not None and not (covers(info, server_name) or server_name in info.san_ips):
            raise PingFailed(
                f"name mismatch: the server's certificate names {', '.join(info.presented_names) or '(nothing)'}, "
                f"not {server_name} (give the expected name with --server-name)"
            )
        if not ca:
            notes.append("the server's certificate was not verified (no --ca)")
        result = _exchange(tls, target, started, timeout, info)
        result.notes += notes
        return result


def _explain_tls(exc: ssl.SSLError) -> str:
    text = str(exc).lower()
    if "certificate required" in text or ("handshake failure" in text and "alert" in text):
        return "the server wants a client certificate: pass --cert and --key (one its trust store and allow-list accept)"
    if "unknown ca" in text or "bad certificate" in text:
        return "the server refused our client certificate (not issued by a CA it trusts, or not allow-listed)"
    if "certificate expired" in text:
        return "the server refused our client certificate: it has expired"
    if "certificate revoked" in text:
        return "the server refused our client certificate: it is revoked"
    if "wrong version number" in text:
        return "the far end does not speak TLS on that port (plain SIP?)"
    if "unsupported certificate" in text:
        return (
            "the server refused our client certificate as unsupported: a client certificate "
            "needs the clientAuth extended key usage (ours may be serverAuth only)"
        )
    if "unexpected eof" in text or "eof occurred" in text:
        return (
            "the server closed the connection during the TLS handshake without saying why: it "
            "may be at its connection limit or refuse this address (check its log for "
            "connection_refused)"
        )
    if "protocol version" in text:
        return "no TLS version in common with the server (it needs TLS 1.2 or newer)"
    return f"the TLS handshake failed: {getattr(exc, 'reason', None) or exc}"


def _result(response: Response, started: float) -> PingResult:
    return PingResult(
        response.status,
        response.reason,
        (time.monotonic() - started) * 1000,
        server=response.headers.get("Server") or response.headers.get("User-Agent"),
        warning=response.headers.get("Warning"),
    )


def describe_result(target: Target, result: PingResult) -> list[str]:
    lines = [
        f"{target.transport.upper()} {target.host}:{target.port}: {result.status} {result.reason} "
        f"in {result.rtt_ms:.1f} ms" + (f" ({result.server})" if result.server else "")
    ]
    if result.certificate is not None:
        c = result.certificate
        lines += [
            f"  certificate subject  {c.subject}",
            f"  issuer               {c.issuer}",
            f"  serial               {c.serial}",
            f"  thumbprint SHA-1     {c.thumbprint_sha1}",
            f"  thumbprint SHA-256   {c.thumbprint_sha256}",
            f"  valid until          {c.not_after.isoformat()} "
            f"({c.days_left(dt.datetime.now(dt.UTC)):.0f} days)",
        ]
    if result.warning:
        lines.append(f"  warning: {result.warning}")  # the server's reason, e.g. for a 403
    lines += [f"  note: {note}" for note in result.notes]
    return lines
