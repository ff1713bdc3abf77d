"""Whose certificate is it? RFC 5922 §7.1 identities matched against the allow-list.

Identity order: SAN URIs of scheme sip/sips without a user part; if there are none, SAN
dNSNames; the subject CN only when the certificate has no SAN extension at all. Name
comparison and wildcard rules come from service-identity, not from string code here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service_identity import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, DNSPattern, verify_service_identity

from sipserver.pki.certinfo import CertInfo


class AllowListEntry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def fqdn(self) -> str: ...
    @property
    def allow_wildcard(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Identities:
    names: tuple[str, ...]
    source: str  # "san_uri" | "san_dns" | "subject_cn" | "none"


def sip_identities(info: CertInfo) -> Identities:
    hosts: list[str] = []
    for uri in info.san_uris:
        scheme, sep, rest = uri.partition(":")
        if not sep or scheme.lower() not in ("sip", "sips") or "@" in rest:
            continue
        host = rest.split(";", 1)[0].split("?", 1)[0]
        if host.startswith("["):
            continue  # IP literals are not domain identities
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if host:
            hosts.append(host.lower().rstrip("."))
    if hosts:
        return Identities(tuple(hosts), "san_uri")
    if info.san_dns:
        return Identities(tuple(n.lower().rstrip(".") for n in info.san_dns), "san_dns")
    if not info.has_san and info.common_names:
        return Identities(tuple(n.lower().rstrip(".") for n in info.common_names), "subject_cn")
    return Identities((), "none")


@dataclass(frozen=True, slots=True)
class PeerMatch:
    peer: AllowListEntry | None
    identities: Identities
    closest_fqdn: str | None = None  # set when no peer matched
    wildcard_refused: bool = False  # a wildcard would have matched a peer that forbids it


def _patterns(names: Sequence[str], wildcards: bool) -> list[DNSPattern]:
    patterns = []
    for name in names:
        if "*" in name and not wildcards:
            continue
        try:
            patterns.append(DNSPattern.from_bytes(name.encode("ascii")))
        except (CertificateError, UnicodeEncodeError):
            continue  # not a usable DNS identity (e.g. an IP address as CN)
    return patterns


def _matches(patterns: list[DNSPattern], fqdn: str) -> bool:
    if not patterns:
        return False
    try:
        verify_service_identity(patterns, obligatory_ids=[DNS_ID(fqdn)], optional_ids=[])
    except (VerificationError, ValueError):  # ValueError: not a DNS name at all (an IP address)
        return False
    return True


def match_peer(info: CertInfo, peers: Sequence[AllowListEntry]) -> PeerMatch:
    """The allow-listed peer this certificate identifies, or why there is none."""
    identities = sip_identities(info)
    strict = _patterns(identities.names, wildcards=False)
    loose = _patterns(identities.names, wildcards=True)
    wildcard_refused = False
    for peer in peers:
        if _matches(loose if peer.allow_wildcard else strict, peer.fqdn):
            return PeerMatch(peer, identities)
        if not peer.allow_wildcard and _matches(loose, peer.fqdn):
            wildcard_refused = True
    return PeerMatch(None, identities, closest_fqdn(identities.names, peers), wildcard_refused)


def covers(info: CertInfo, fqdn: str) -> bool:
    """Does the certificate name `fqdn` (wildcards allowed), e.g. our own certificate?"""
    return _matches(_patterns(sip_identities(info).names, wildcards=True), fqdn)


def closest_fqdn(names: Sequence[str], peers: Sequence[AllowListEntry]) -> str | None:
    best: tuple[float, str] | None = None
    for name in names:
        for peer in peers:
            ratio = difflib.SequenceMatcher(None, name, peer.fqdn.lower()).ratio()
            if best is None or ratio > best[0]:
                best = (ratio, peer.fqdn)
    return best[1] if best else None
