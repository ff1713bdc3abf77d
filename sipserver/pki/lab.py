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
    server_fqdn: str, peer_fqdns: list[str], now: dt.datetime, days: int = 825
) -> tuple[Pair, list[Pair]]:
    """(ca, [server, peer...]): the CA pair first, then leaf pairs named by FQDN."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipserver lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sipserver lab CA"),
        ]
    )
    start = now - dt.timedelta(minutes=5)
    ca = ca_builder(
        ca_name, ca_key.public_key(), start, start + dt.timedelta(days=days + 365)
    ).sign(ca_key, hashes.SHA256())
    leaves = []
    for fqdn in [server_fqdn, *peer_fqdns]:
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
