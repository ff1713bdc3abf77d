"""A complete test PKI for an interop lab: one CA, our server certificate and one
certificate per peer, all with serverAuth + clientAuth. Pure: returns PEM bytes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sipserver.pki.generate import ca_builder, key_pem, sip_leaf_builder


@dataclass(frozen=True, slots=True)
class Pair:
    name: str
    cert_pem: bytes
    key_pem: bytes


def make_lab_pki(
    server_fqdn: str | None,
    peer_fqdns: list[str],
    now: dt.datetime,
    days: int = 825,
    existing_ca: Pair | None = None,
) -> tuple[Pair, list[Pair]]:
    """(ca, [server, peer...]): the CA pair first, then leaf pairs named by FQDN (no server
    pair when `server_fqdn` is None). With `existing_ca` the leaves are signed by it, so
    that certificates issued earlier stay trusted."""
    start = now - dt.timedelta(minutes=5)
    if existing_ca is not None:
        ca = x509.load_pem_x509_certificate(existing_ca.cert_pem)
        loaded = serialization.load_pem_private_key(existing_ca.key_pem, None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the lab CA key is not the EC key sipserver makes")
        ca_key, ca_name = loaded, ca.subject
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipserver lab"),
                x509.NameAttribute(NameOID.COMMON_NAME, "sipserver lab CA"),
            ]
        )
        ca = ca_builder(
            ca_name, ca_key.public_key(), start, start + dt.timedelta(days=days + 365)
        ).sign(ca_key, hashes.SHA256())
    leaves = []
    for fqdn in [server_fqdn, *peer_fqdns] if server_fqdn else peer_fqdns:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            sip_leaf_builder(fqdn, key.public_key(), ca_name, start, days)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        leaves.append(Pair(fqdn, cert.public_bytes(serialization.Encoding.PEM), key_pem(key)))
    return Pair("ca", ca.public_bytes(serialization.Encoding.PEM), key_pem(ca_key)), leaves
