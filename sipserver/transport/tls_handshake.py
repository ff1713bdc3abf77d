"""The TLS gate, both ways: handshake under a deadline, then the certificate's identity
(the allow-list inbound, the target's FQDN outbound). Says exactly why a far end was
refused and which certificate it presented."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio
from OpenSSL import SSL

from sipserver.config.schema import PeerSettings
from sipserver.pki.certinfo import CertInfo, describe
from sipserver.pki.identity import match_peer
from sipserver.pki.revocation import RevocationChecker
from sipserver.pki.verify_errors import describe_verify_error
from sipserver.transport.tls_context import (
    VerifyRecord,
    new_client_connection,
    new_server_connection,
)
from sipserver.transport.tls_stream import TLSStream


@dataclass(frozen=True, slots=True)
class TlsAccepted:
    stream: TLSStream
    peer: PeerSettings
    certificate: CertInfo
    identity_source: str
    tls_version: str
    cipher: str
    session_resumed: bool  # an abbreviated handshake: no certificates sent, none verified


@dataclass(frozen=True, slots=True)
class TlsRefused:
    reason: str  # no_client_certificate | untrusted_chain | certificate_expired | ...
    detail: str
    certificate: CertInfo | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    stream: TLSStream | None = None  # set when the handshake finished (close it politely)


def _openssl_reasons(exc: BaseException) -> list[str]:
    reasons: list[str] = []
    for entry in getattr(exc, "args", ())[:1]:
        if isinstance(entry, list):
            for item in entry:
                if isinstance(item, tuple) and len(item) == 3:
                    reasons.append(str(item[2]))
    return reasons or [str(exc)]


def _classify_failure(exc: BaseException, record: VerifyRecord, called: bool) -> TlsRefused:
    if record.errors:
        return _chain_refused(record)
    reasons = _openssl_reasons(exc)
    joined = "; ".join(reasons)
    lowered = joined.lower()
    if not called and (
        "peer did not return a certificate" in lowered or "certificate required" in lowered
    ):
        return TlsRefused(
            "no_client_certificate", "the peer sent no client certificate; 5061 requires mutual TLS"
        )
    if "alert" in lowered and any(
        a in lowered
        for a in ("unknown ca", "bad certificate", "certificate unknown", "decrypt error")
    ):
        return TlsRefused(
            "peer_refused_our_certificate",
            f"the peer rejected our certificate ({joined}); import our CA or "
            "certificate into its trust store (sipserver certs export)",
        )
    if (
        "wrong version number" in lowered
        or "http request" in lowered
        or "packet length too long" in lowered
    ):
        return TlsRefused(
            "not_tls", f"the peer did not speak TLS ({joined}); plain SIP belongs on the SIP port"
        )
    if (
        "unsupported protocol" in lowered
        or "version too low" in lowered  # an SSLv3 (or TLS 1.0/1.1) ClientHello
        or "no shared cipher" in lowered
        or "no suitable" in lowered
    ):
        return TlsRefused(
            "tls_parameters_refused",
            f"no common TLS version or cipher suite ({joined}); we need TLS 1.2+ with AEAD suites",
        )
    return TlsRefused("handshake_failed", joined)


def _chain_refused(record: VerifyRecord) -> TlsRefused:
    """The chain did not verify: describe the peer's own (leaf) certificate, and name the
    certificate where verification failed when that was one of its issuers."""
    code, depth, failed_at = record.errors[0]
    reason, text = describe_verify_error(code)
    info = describe(record.leaf or failed_at)
    fields: dict[str, Any] = {
        "verify_error": code,
        "verify_depth": depth,
        "presented_names": list(info.presented_names),
    }
    if depth > 0 and record.leaf is not None:
        issuer = failed_at.subject.rfc4514_string()
        fields["untrusted_issuer"] = issuer
        text = f"{text} (the chain ends in {issuer}, sent by the peer)"
    return TlsRefused(reason, text, info, fields)


def resumed_session_refusal(info: CertInfo, now: dt.datetime) -> TlsRefused | None:
    """A resumed session skips certificate verification: OpenSSL only checked the
    certificate when the session was first made, so its validity dates are checked here."""
    if info.valid_at(now):
        return None
    reason, text = describe_verify_error(10 if now > info.not_after else 9)
    return TlsRefused(
        reason,
        f"{text} (the peer resumed a TLS session made while it was valid)",
        info,
        {"tls_session_resumed": True},
    )


async def tls_handshake(
    transport: trio.abc.Stream,
    context: SSL.Context,
    handshake_timeout: float,
    peers: Sequence[PeerSettings],
    revocation: RevocationChecker | None = None,
    *,
    target: PeerSettings | None = None,
) -> TlsAccepted | TlsRefused:
    """One handshake and verification for both directions. Inbound (`target` None): the
    peer's certificate must name an allow-listed peer. Outbound: the target's certificate
    must name the target's FQDN (RFC 5922), exactly as we demand of peers that call us."""
    outbound = target is not None
    if target is not None:
        connection, record = new_client_connection(context, target.fqdn)
        peers = [target]
    else:
        connection, record = new_server_connection(context)
    stream = TLSStream(transport, connection)
    try:
        with trio.fail_after(handshake_timeout):
            await stream.do_handshake()
    except trio.TooSlowError:
        return TlsRefused(
            "handshake_timeout",
            f"no complete TLS handshake within {handshake_timeout:g} s (tls.handshake_timeout)",
        )
    except (trio.BrokenResourceError, SSL.Error) as exc:
        if isinstance(exc, trio.BrokenResourceError) and not record.errors and not outbound:
            return TlsRefused(
                "handshake_aborted", f"the peer closed the connection during the handshake ({exc})"
            )
        refused = _classify_failure(exc, record, record.called or outbound)
        if (
            outbound
            and refused.reason == "handshake_failed"
            and "certificate" in refused.detail.lower()
        ):
            return TlsRefused("target_refused_our_certificate", refused.detail)
        return refused

    connection.set_app_data(None)  # the verify record served the handshake: let it go
    if record.errors:  # never reached: the leaf fails the handshake; refuse all the same
        return replace(_chain_refused(record), stream=stream)
    leaf = connection.get_peer_certificate(as_cryptography=True)
    if leaf is None:  # inbound, VERIFY_FAIL_IF_NO_PEER_CERT prevents this; refuse anyway
        if outbound:
            return TlsRefused(
                "no_server_certificate", "the target sent no certificate", stream=stream
            )
        return TlsRefused(
            "no_client_certificate", "the peer sent no client certificate", stream=stream
        )
    info = describe(leaf)
    resumed = not record.called  # nothing to verify: the peer sent no certificate
    refusal = resumed_session_refusal(info, dt.datetime.now(dt.UTC)) if resumed else None
    if refusal is not None:
        return replace(refusal, stream=stream)
    revoked = revocation.check(leaf) if revocation is not None else None
    if revoked is not None:
        when = revoked.revoked_at.date().isoformat()
        why = f" ({revoked.reason})" if revoked.reason else ""
        serial = f"serial {revoked.serial}"
        which = f"the target's certificate ({serial})" if outbound else serial
        return TlsRefused(
            "certificate_revoked",
            f"{which} was revoked on {when}{why} "
            f"by the CRL {revoked.crl_path} of {revoked.crl_issuer}",
            info,
            {"crl": revoked.crl_path, "revoked_at": revoked.revoked_at.isoformat()},
            stream=stream,
        )
    match = match_peer(info, peers)
    if match.peer is None:
        names = list(match.identities.names) or ([] if outbound else list(info.presented_names))
        if outbound:
            assert target is not None
            detail = (
                f"the target's certificate names {', '.join(names) or '(none)'}, not {target.fqdn}"
            )
            return TlsRefused(
                "target_name_mismatch", detail, info, {"presented_names": names}, stream=stream
            )
        detail = (
            f"certificate names {', '.join(names) or '(none)'} (from {match.identities.source}) "
            f"match no allow-listed peer"
        )
        if match.wildcard_refused:
            detail += "; a wildcard would match but that peer does not set allow_wildcard"
        elif match.closest_fqdn:
            detail += f"; closest allow-listed FQDN is {match.closest_fqdn}"
        return TlsRefused(
            "not_on_allow_list",
            detail,
            info,
            {
                "presented_names": names,
                "identity_source": match.identities.source,
                "closest_fqdn": match.closest_fqdn,
                "tls_session_resumed": resumed,
            },
            stream=stream,
        )
    peer = match.peer
    assert isinstance(peer, PeerSettings)
    return TlsAccepted(
        stream,
        peer,
        info,
        match.identities.source,
        connection.get_protocol_version_name(),
        connection.get_cipher_name() or "",
        resumed,
    )
