"""Certificate revocation lists from trust_dir, checked for peer certificates.

Only issuers that have a CRL in trust_dir are checked: a CA without one is not treated as
"everything revoked" (OpenSSL's CRL_CHECK would refuse all its certificates).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from sipserver.pki.certinfo import serial_hex


@dataclass(frozen=True, slots=True)
class LoadedCrl:
    path: str
    crl: x509.CertificateRevocationList


@dataclass(frozen=True, slots=True)
class Revoked:
    serial: str  # hex, upper case
    revoked_at: dt.datetime
    reason: str | None
    crl_path: str
    crl_issuer: str


@dataclass(frozen=True, slots=True)
class CrlProblem:
    path: str
    problem: str


class RevocationChecker:
    def __init__(self, crls: Sequence[LoadedCrl], anchors: Sequence[x509.Certificate]) -> None:
        """Keep the CRLs whose signature verifies with a trust anchor of the same name."""
        self.usable: list[LoadedCrl] = []
        self.problems: list[CrlProblem] = []
        for item in crls:
            issuer = next((a for a in anchors if a.subject == item.crl.issuer), None)
            if issuer is None:
                self.problems.append(
                    CrlProblem(
                        item.path, f"no trust anchor named {item.crl.issuer.rfc4514_string()}"
                    )
                )
                continue
            if not item.crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                self.problems.append(
                    CrlProblem(item.path, "signature does not verify with its issuer")
                )
                continue
            self.usable.append(item)

    def stale(self, now: dt.datetime) -> list[CrlProblem]:
        return [
            CrlProblem(item.path, f"next update was due {item.crl.next_update_utc.isoformat()}")
            for item in self.usable
            if item.crl.next_update_utc is not None and item.crl.next_update_utc < now
        ]

    def check(self, cert: x509.Certificate) -> Revoked | None:
        for item in self.usable:
            if item.crl.issuer != cert.issuer:
                continue
            entry = item.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                try:
                    reason = entry.extensions.get_extension_for_class(
                        x509.CRLReason
                    ).value.reason.name
                except x509.ExtensionNotFound:
                    reason = None
                return Revoked(
                    serial_hex(cert.serial_number),
                    entry.revocation_date_utc,
                    reason,
                    item.path,
                    item.crl.issuer.rfc4514_string(),
                )
        return None
