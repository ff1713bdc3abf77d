"""TLS contexts for both directions: TLS 1.2+ (1.3 preferred), AEAD suites only, no renegotiation or
compression; the far end's certificate always verified against the trust anchors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL, crypto

from sipserver.pki.select import Candidate

# TLS 1.2 suites: ECDHE for forward secrecy, AEAD only. TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)


@dataclass
class VerifyRecord:
    """What the verify callback saw during one handshake."""

    leaf: x509.Certificate | None = None
    errors: list[tuple[int, int, x509.Certificate]] = field(
        default_factory=list
    )  # (code, depth, cert)
    called: bool = False


def _verify_callback(
    connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    record = connection.get_app_data()
    if not isinstance(record, VerifyRecord):
        return bool(ok)
    record.called = True
    if not ok:
        record.errors.append((errno, depth, cert.to_cryptography()))
        if depth > 0:
            # A chain that fails above the leaf (an untrusted CA the peer sent along) would
            # stop here, and the refusal could only describe that CA. Walk on down to the
            # leaf, which then fails the handshake with OpenSSL's error kept.
            return True
    if depth == 0:
        record.leaf = cert.to_cryptography()
        return bool(ok) and not record.errors
    return bool(ok)


def _context(
    candidate: Candidate, trust_anchors: Sequence[x509.Certificate], min_version: str
) -> SSL.Context:
    """What both directions share: versions, AEAD suites, our certificate and chain, and
    the trust anchors a far end's chain must reach."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(TLS12_CIPHERS)
    assert candidate.key is not None
    ctx.use_certificate(candidate.chain[0])
    for intermediate in candidate.chain[1:]:
        ctx.add_extra_chain_cert(intermediate)
    ctx.use_privatekey(candidate.key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for anchor in trust_anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    leaf = candidate.chain[0]
    if leaf.issuer == leaf.subject and leaf not in trust_anchors:
        # A self-signed certificate of ours is its own anchor: our other workers and
        # instances prove themselves with it on the sibling hop (only we hold its key).
        store.add_cert(crypto.X509.from_cryptography(leaf))
    ctx.set_verify_depth(9)
    # Idle connections give their read and write buffers back (about 34 KiB each): a
    # server holding thousands of quiet peers should not hold their buffers too.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def build_server_context(
    candidate: Candidate, trust_anchors: Sequence[x509.Certificate], min_version: str
) -> SSL.Context:
    """For our listeners: a client certificate is required and verified."""
    ctx = _context(candidate, trust_anchors, min_version)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_TICKET
    )
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE, _verify_callback
    )
    # Sessions stay in this context's cache (never in tickets: OP_NO_TICKET), so a peer
    # that opens a connection per call resumes without sending or having its chain
    # verified again; the allow-list, revocation and validity dates are still checked on
    # every connection (tls_handshake). A reload builds a new context and so drops them.
    # Five minutes, as nginx and Apache keep theirs.
    ctx.set_session_id(b"sipserver")
    ctx.set_timeout(300)
    return ctx


def build_client_context(
    candidate: Candidate, trust_anchors: Sequence[x509.Certificate], min_version: str
) -> SSL.Context:
    """For our outbound legs: our certificate as the client certificate, the target's
    chain verified against the same trust anchors (its name is checked after)."""
    ctx = _context(candidate, trust_anchors, min_version)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_verify(SSL.VERIFY_PEER, _verify_callback)
    return ctx


def new_client_connection(
    ctx: SSL.Context, server_name: str
) -> tuple[SSL.Connection, VerifyRecord]:
    connection = SSL.Connection(ctx, None)
    record = VerifyRecord()
    connection.set_app_data(record)
    connection.set_tlsext_host_name(server_name.encode("idna"))
    connection.set_connect_state()
    return connection, record


def new_server_connection(ctx: SSL.Context) -> tuple[SSL.Connection, VerifyRecord]:
    connection = SSL.Connection(ctx, None)
    record = VerifyRecord()
    connection.set_app_data(record)
    connection.set_accept_state()
    return connection, record
