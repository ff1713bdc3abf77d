"""Choose the server certificate the way Exchange UM does.

Order: CA-issued with the longest remaining validity, CA-issued with shorter, then
self-signed longest, then self-signed shorter; within a rank, certificates that carry both
serverAuth and clientAuth come first (gateways such as Dialogic need both, and our
outbound mutual-TLS legs present the same certificate as a client certificate).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from sipserver.pki.certinfo import CertInfo, describe
from sipserver.pki.identity import covers


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str
    chain: tuple[x509.Certificate, ...]  # leaf first
    key: CertificateIssuerPrivateKeyTypes | None
    info: CertInfo

    @classmethod
    def build(
        cls,
        path: str,
        chain: Sequence[x509.Certificate],
        key: CertificateIssuerPrivateKeyTypes | None,
    ) -> Candidate:
        return cls(path, tuple(chain), key, describe(chain[0]))


@dataclass(frozen=True, slots=True)
class Skipped:
    candidate: Candidate
    reason: str


@dataclass(frozen=True, slots=True)
class Selection:
    chosen: Candidate | None
    reason: str
    skipped: tuple[Skipped, ...]
    ranked: tuple[Candidate, ...]


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unusable_reason(candidate: Candidate, fqdn: str, now: dt.datetime) -> str | None:
    info = candidate.info
    if candidate.key is None:
        return "no private key found (same file or <name>.key)"
    if _spki(candidate.key.public_key()) != _spki(candidate.chain[0].public_key()):
        return "private key does not match the certificate"
    if now < info.not_before:
        return f"not valid before {info.not_before.isoformat()}"
    if now > info.not_after:
        return f"expired on {info.not_after.isoformat()}"
    if info.ekus and "serverAuth" not in info.ekus:
        return "extended key usage lacks serverAuth"
    if not covers(info, fqdn):
        return f"no SAN covers the server FQDN {fqdn}"
    return None


def _both_ekus(info: CertInfo) -> bool:
    """Good for both ends of a mutual-TLS leg: serverAuth and clientAuth, or no EKU at all."""
    return not info.ekus or ("serverAuth" in info.ekus and "clientAuth" in info.ekus)


def rank_reason(ranked: Sequence[Candidate], index: int, now: dt.datetime) -> str:
    """Why the usable certificate at `index` of `ranked` sits where it does, in words."""
    info = ranked[index].info
    kind = "self-signed" if info.self_signed else "CA-issued"
    ekus = "serverAuth and clientAuth" if info.ekus else "no EKU restriction"
    if not _both_ekus(info):
        ekus = "serverAuth without clientAuth"
    words = f"{kind}, {ekus}, {info.days_left(now):.0f} days left"
    if index == 0:
        return words + ("; ranked first" if len(ranked) > 1 else "")
    first = ranked[0].info
    if info.self_signed and not first.self_signed:
        behind = "CA-issued certificates come before self-signed ones"
    elif _both_ekus(first) and not _both_ekus(info):
        behind = "certificates that can also be a client certificate come first"
    else:
        behind = "the one ranked first stays valid longer"
    return f"{words}; after rank 1: {behind}"


def choose_certificate(candidates: Sequence[Candidate], fqdn: str, now: dt.datetime) -> Selection:
    skipped: list[Skipped] = []
    usable: list[Candidate] = []
    for candidate in candidates:
        reason = unusable_reason(candidate, fqdn, now)
        if reason is None:
            usable.append(candidate)
        else:
            skipped.append(Skipped(candidate, reason))

    def rank(c: Candidate) -> tuple[bool, bool, float]:
        return (c.info.self_signed, not _both_ekus(c.info), -c.info.days_left(now))

    ranked = sorted(usable, key=rank)
    if not ranked:
        return Selection(None, "no usable certificate", tuple(skipped), ())
    best = ranked[0]
    kind = "self-signed" if best.info.self_signed else "CA-issued"
    reason = f"{kind}, {best.info.days_left(now):.0f} days left"
    if len(ranked) > 1:
        reason += f", best of {len(ranked)} usable certificates"
    return Selection(best, reason, tuple(skipped), tuple(ranked))
