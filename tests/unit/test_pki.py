"""Identity per RFC 5922 against the allow-list, certificate description and selection."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from sipserver.pki.certinfo import describe, serial_hex
from sipserver.pki.generate import generate_self_signed
from sipserver.pki.identity import covers, match_peer, sip_identities
from sipserver.pki.select import Candidate, choose_certificate
from sipserver.transport.tls_handshake import resumed_session_refusal
from tests.certs import NOW, Issued, make_ca, make_leaf


@dataclass(frozen=True)
class Peer:
    name: str
    fqdn: str
    allow_wildcard: bool = False


PEERS = [Peer("gw1", "gw1.example.test"), Peer("pbx1", "pbx1.example.test")]
CA = make_ca()


def test_certinfo_has_admin_friendly_thumbprints_and_serial() -> None:
    leaf = make_leaf(CA, dns=["gw1.example.test"])
    info = describe(leaf.cert)
    assert len(info.thumbprint_sha1) == 40 and info.thumbprint_sha1 == info.thumbprint_sha1.upper()
    assert len(info.thumbprint_sha256) == 64 and ":" not in info.thumbprint_sha256
    assert int(info.serial, 16) == leaf.cert.serial_number
    assert info.issuer == "CN=Test Root CA" and not info.self_signed
    assert info.ekus == ("serverAuth", "clientAuth")


@pytest.mark.parametrize("serial", [0x0123456789ABCDEF0123, 0x80FF, 0x0F, 0x7A])
def test_serials_are_whole_bytes_of_hex_as_openssl_prints_them(serial: int) -> None:
    leaf = make_leaf(make_ca("CA"), dns=["gw1.example.test"], serial=serial)
    shown = subprocess.run(
        ["openssl", "x509", "-noout", "-serial"],
        input=leaf.cert_pem,
        capture_output=True,
        check=True,
    ).stdout.decode()
    info = describe(leaf.cert)
    assert shown.strip() == f"serial={info.serial}"
    assert len(info.serial) % 2 == 0 and int(info.serial, 16) == serial


def test_sip_uri_san_wins_over_dns_san() -> None:
    info = describe(make_leaf(CA, dns=["pbx1.example.test"], uris=["sip:gw1.example.test"]).cert)
    assert sip_identities(info).names == ("gw1.example.test",)
    assert match_peer(info, PEERS).peer == PEERS[0]


def test_sip_uri_with_user_part_is_not_a_domain_identity() -> None:
    info = describe(
        make_leaf(CA, dns=["gw1.example.test"], uris=["sip:alice@pbx1.example.test"]).cert
    )
    assert sip_identities(info).source == "san_dns"
    assert match_peer(info, PEERS).peer == PEERS[0]


def test_cn_counts_only_without_any_san() -> None:
    no_san = describe(make_leaf(CA, cn="gw1.example.test", no_san=True).cert)
    assert sip_identities(no_san).source == "subject_cn"
    assert match_peer(no_san, PEERS).peer == PEERS[0]
    other_san = describe(make_leaf(CA, cn="gw1.example.test", dns=["other.example.test"]).cert)
    match = match_peer(other_san, PEERS)
    assert match.peer is None


def test_wildcards_are_refused_unless_the_peer_allows_them() -> None:
    info = describe(make_leaf(CA, dns=["*.example.test"]).cert)
    refused = match_peer(info, PEERS)
    assert refused.peer is None and refused.wildcard_refused
    lenient = [Peer("gw1", "gw1.example.test", allow_wildcard=True)]
    assert match_peer(info, lenient).peer == lenient[0]
    # One label only, as service-identity applies RFC 6125.
    deep = [Peer("deep", "a.b.example.test", allow_wildcard=True)]
    assert match_peer(info, deep).peer is None


def test_closest_allow_listed_fqdn_is_reported() -> None:
    info = describe(make_leaf(CA, dns=["gw2.example.test"]).cert)
    match = match_peer(info, PEERS)
    assert match.peer is None and match.closest_fqdn == "gw1.example.test"


def test_names_compare_case_insensitively() -> None:
    info = describe(make_leaf(CA, dns=["GW1.Example.TEST"]).cert)
    assert match_peer(info, PEERS).peer == PEERS[0]


def _candidate(
    issued: Issued, path: str, key: CertificateIssuerPrivateKeyTypes | None = None
) -> Candidate:
    return Candidate.build(path, [issued.cert], key if key is not None else issued.key)


def test_selection_follows_the_exchange_order_and_says_why_others_were_skipped() -> None:
    fqdn = "sip.example.test"
    ca_long = make_leaf(CA, dns=[fqdn], not_after=NOW + dt.timedelta(days=700))
    ca_short = make_leaf(CA, dns=[fqdn], not_after=NOW + dt.timedelta(days=30))
    self_long = make_leaf(None, dns=[fqdn], not_after=NOW + dt.timedelta(days=3000))
    self_short = make_leaf(None, dns=[fqdn], not_after=NOW + dt.timedelta(days=20))
    server_only = make_leaf(
        CA,
        dns=[fqdn],
        not_after=NOW + dt.timedelta(days=900),
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    expired = make_leaf(
        CA, dns=[fqdn], not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
    )
    future = make_leaf(CA, dns=[fqdn], not_before=NOW + dt.timedelta(days=1))
    wrong_name = make_leaf(CA, dns=["other.example.test"])
    client_only = make_leaf(CA, dns=[fqdn], ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    candidates = [
        _candidate(self_short, "self_short"),
        _candidate(self_long, "self_long"),
        _candidate(ca_short, "ca_short"),
        _candidate(expired, "expired"),
        _candidate(server_only, "server_only"),
        _candidate(ca_long, "ca_long"),
        _candidate(future, "future"),
        _candidate(wrong_name, "wrong_name"),
        _candidate(client_only, "client_only"),
        _candidate(ca_long, "mismatched_key", key=ca_short.key),
    ]
    selection = choose_certificate(candidates, fqdn, NOW)
    assert [c.path for c in selection.ranked] == [
        "ca_long",
        "ca_short",
        "server_only",
        "self_long",
        "self_short",
    ]
    assert selection.chosen is not None and selection.chosen.path == "ca_long"
    assert selection.reason.startswith("CA-issued, 700 days left")
    reasons = {s.candidate.path: s.reason for s in selection.skipped}
    assert reasons["expired"].startswith("expired on")
    assert reasons["future"].startswith("not valid before")
    assert reasons["wrong_name"] == "no SAN covers the server FQDN sip.example.test"
    assert reasons["client_only"] == "extended key usage lacks serverAuth"
    assert reasons["mismatched_key"] == "private key does not match the certificate"


def test_generated_certificate_is_p256_with_both_ekus_and_covers_the_fqdn() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    generated = generate_self_signed("sip.example.test", NOW)
    cert = x509.load_pem_x509_certificate(generated.certificate_pem)
    info = describe(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert info.ekus == ("serverAuth", "clientAuth") and info.self_signed
    assert covers(info, "sip.example.test")
    assert "sip.example.test" in info.san_dns
    rsa = generate_self_signed("sip.example.test", NOW, key_type="rsa-2048")
    assert x509.load_pem_x509_certificate(rsa.certificate_pem).public_key().key_size == 2048  # type: ignore[union-attr]


def test_revocation_checks_only_issuers_with_a_verified_crl() -> None:
    from cryptography import x509

    from sipserver.pki.revocation import LoadedCrl, RevocationChecker
    from tests.certs import make_crl

    bad, good = make_leaf(CA, dns=["gw1.example.test"]), make_leaf(CA, dns=["gw1.example.test"])
    other_ca = make_ca("Other CA")
    crl = x509.load_pem_x509_crl(make_crl(CA, [bad]))
    forged = x509.load_pem_x509_crl(make_crl(other_ca, [good]))
    checker = RevocationChecker(
        [LoadedCrl("ca.crl", crl), LoadedCrl("forged.crl", forged)], [CA.cert]
    )
    assert [p.path for p in checker.problems] == ["forged.crl"]  # no anchor named Other CA
    revoked = checker.check(bad.cert)
    assert revoked is not None and revoked.serial == serial_hex(bad.cert.serial_number)
    assert revoked.reason == "key_compromise" and revoked.crl_path == "ca.crl"
    assert checker.check(good.cert) is None
    assert (
        checker.check(make_leaf(other_ca, dns=["x.test"]).cert) is None
    )  # no CRL for that CA: not checked
    import datetime as dt

    assert checker.stale(NOW + dt.timedelta(days=30))[0].path == "ca.crl"


def test_expiry_schedule_with_an_injected_clock() -> None:
    import datetime as dt

    from sipserver.pki.expiry import DailyOnce, expiry_notice

    not_after = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert expiry_notice(not_after, not_after - dt.timedelta(days=31)) is None
    notice = expiry_notice(not_after, not_after - dt.timedelta(days=29, hours=1))
    assert (
        notice is not None
        and not notice.expired
        and notice.days == 30
        and notice.level == "warning"
    )
    assert expiry_notice(not_after, not_after - dt.timedelta(hours=1)).days == 1  # type: ignore[union-attr]
    late = expiry_notice(not_after, not_after + dt.timedelta(days=2, hours=3))
    assert late is not None and late.expired and late.days == 2 and late.level == "error"
    once = DailyOnce()
    day = dt.datetime(2027, 2, 10, 8, 0, tzinfo=dt.UTC)
    assert once.due("A", day) and not once.due("A", day + dt.timedelta(hours=15))
    assert once.due("B", day)  # keys are independent
    assert once.due("A", day + dt.timedelta(hours=16, minutes=1))  # the next UTC day


def test_a_resumed_session_is_refused_once_its_certificate_is_out_of_date() -> None:
    # OpenSSL does not look at the certificate again when a peer resumes a session.
    info = describe(make_leaf(make_ca(), dns=["gw1.example.test"]).cert)
    assert resumed_session_refusal(info, NOW) is None
    expired = resumed_session_refusal(info, info.not_after + dt.timedelta(seconds=1))
    assert expired is not None and expired.reason == "certificate_expired"
    assert "resumed a TLS session" in expired.detail
    early = resumed_session_refusal(info, info.not_before - dt.timedelta(seconds=1))
    assert early is not None and early.reason == "certificate_not_yet_valid"
