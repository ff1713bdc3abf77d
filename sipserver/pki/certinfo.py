"""What admins need to know about a certificate: whose, by whom, which one."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    issuer: str
    serial: str  # hex, upper case
    thumbprint_sha1: str  # hex, upper case, no colons: the form Windows and Exchange show
    thumbprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    common_names: tuple[str, ...]
    san_dns: tuple[str, ...]
    san_uris: tuple[str, ...]
    san_ips: tuple[str, ...]
    has_san: bool
    ekus: tuple[str, ...]
    self_signed: bool

    def log_fields(self, prefix: str = "") -> dict[str, str]:
        """The fields every log event about a certificate carries."""
        # Keyed by the thumbprint (the DER decides every field), not by the CertInfo: its
        # generated hash covers all fourteen fields, on every call line.
        key = (self.thumbprint_sha256, prefix)
        fields = _LOG_FIELDS.get(key)
        if fields is None:
            if len(_LOG_FIELDS) >= _LOG_FIELDS_KEPT:
                _LOG_FIELDS.clear()
            fields = _LOG_FIELDS[key] = tuple(self._fields(prefix).items())
        return dict(fields)

    def _fields(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}subject": self.subject,
            f"{prefix}issuer": self.issuer,
            f"{prefix}serial": self.serial,
            f"{prefix}thumbprint_sha1": self.thumbprint_sha1,
            f"{prefix}thumbprint_sha256": self.thumbprint_sha256,
            f"{prefix}not_before": self.not_before.isoformat(),
            f"{prefix}not_after": self.not_after.isoformat(),
        }

    @property
    def presented_names(self) -> tuple[str, ...]:
        """Every name the certificate offers, for refusal messages."""
        return (
            self.san_uris
            + self.san_dns
            + self.san_ips
            + (() if self.has_san else self.common_names)
        )

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def valid_at(self, now: dt.datetime) -> bool:
        return self.not_before <= now <= self.not_after


# Keyed by the certificate itself (hashed and compared by its DER): a gateway that opens a
# connection per call presents the same certificate each time.
@functools.lru_cache(maxsize=1024)
def describe(cert: x509.Certificate) -> CertInfo:
    der = cert.public_bytes(serialization.Encoding.DER)
    san_dns: tuple[str, ...] = ()
    san_uris: tuple[str, ...] = ()
    san_ips: tuple[str, ...] = ()
    has_san = False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        has_san = True
        san_dns = tuple(san.get_values_for_type(x509.DNSName))
        san_uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        san_ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        ekus = tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        ekus = ()
    common_names = tuple(
        str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=serial_hex(cert.serial_number),
        thumbprint_sha1=cert.fingerprint(hashes.SHA1()).hex().upper(),
        thumbprint_sha256=_sha256(der),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        common_names=common_names,
        san_dns=san_dns,
        san_uris=san_uris,
        san_ips=san_ips,
        has_san=has_san,
        ekus=ekus,
        self_signed=cert.issuer == cert.subject,
    )


def serial_hex(serial: int) -> str:
    """A serial number as whole bytes in upper-case hex (`0123…`, never `123…`): the form
    openssl, Windows and CA records show, so admins can compare it character for character."""
    text = format(serial, "X")
    return text if len(text) % 2 == 0 else "0" + text


def _sha256(der: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex().upper()


_LOG_FIELDS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
_LOG_FIELDS_KEPT = 512
