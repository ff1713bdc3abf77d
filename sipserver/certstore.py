"""Reading certificates from disk and writing a generated one. The decisions are pure
(`pki/`); this module only does the file I/O around them."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

from sipserver.config.schema import Config
from sipserver.errors import SipServerError
from sipserver.pki.certinfo import describe
from sipserver.pki.generate import generate_self_signed
from sipserver.pki.revocation import LoadedCrl, RevocationChecker
from sipserver.pki.select import Candidate, Selection, choose_certificate

log = structlog.get_logger("sipserver")

CERT_SUFFIXES = (".pem", ".crt", ".cer")
PKCS12_SUFFIXES = (".pfx", ".p12")


class CertificateSetupError(SipServerError):
    """No usable certificate, trust anchor, CRL or PKCS#12 password: says which and why,
    and the configuration key it concerns."""

    def __init__(self, message: str, key: str = "tls.certificate_dir") -> None:
        super().__init__(message)
        self.key = key


def setup_problems(config: Config, default_state_dir: Path) -> list[tuple[str, str]]:
    """(key, problem) for what would otherwise make the server fall back silently: a
    certificate or trust folder that does not exist (only the default state folders are
    created on first run), or a certificate file, PKCS#12 included, that cannot be opened.
    `check-config`, start-up and every reload refuse the same things."""
    problems = []
    for key, folder, default in (
        ("tls.certificate_dir", config.tls.certificate_dir, default_state_dir / "certs" / "server"),
        ("tls.trust_dir", config.tls.trust_dir, default_state_dir / "certs" / "trust"),
    ):
        if not folder.is_dir() and folder != default:
            problems.append(
                (key, f"folder {folder} does not exist (create it, or correct the path)")
            )
    keylog = config.tls.keylog_file
    if keylog is not None and not (keylog.parent.is_dir() and os.access(keylog.parent, os.W_OK)):
        problems.append(("tls.keylog_file", f"cannot write {keylog}: no such folder, or not ours"))
    try:
        _, unreadable = load_candidates(config.tls.certificate_dir, pkcs12_password(config))
    except CertificateSetupError as exc:
        return [*problems, (exc.key, str(exc))]
    problems += [("tls.certificate_dir", f"{path}: {why}") for path, why in unreadable]
    return problems


def _load_certs(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _load_key(path: Path, data: bytes) -> object | None:
    if b"PRIVATE KEY-----" in data:
        return load_pem_private_key(data, password=None)
    sibling = path.with_suffix(".key")
    if sibling.exists():
        key_data = sibling.read_bytes()
        if b"-----BEGIN" in key_data:
            return load_pem_private_key(key_data, password=None)
        return load_der_private_key(key_data, password=None)
    return None


def pkcs12_password(config: Config) -> bytes | None:
    """From tls.pkcs12_password_file (first line) or the variable tls.pkcs12_password_env."""
    if config.tls.pkcs12_password_file is not None:
        try:
            return config.tls.pkcs12_password_file.read_text("utf-8").splitlines()[0].encode()
        except (OSError, IndexError) as exc:
            raise CertificateSetupError(
                f"cannot read tls.pkcs12_password_file {config.tls.pkcs12_password_file}: {exc}",
                "tls.pkcs12_password_file",
            ) from exc
    if config.tls.pkcs12_password_env is not None:
        value = os.environ.get(config.tls.pkcs12_password_env)
        return value.encode() if value is not None else None
    return None


def _load_pkcs12(path: Path, password: bytes | None) -> Candidate:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(path.read_bytes(), password)
    except ValueError as exc:
        hint = "" if password else " (no password configured: tls.pkcs12_password_file or _env)"
        raise ValueError(f"PKCS#12 cannot be opened: {exc}{hint}") from exc
    if cert is None:
        raise ValueError("PKCS#12 holds no certificate")
    return Candidate.build(str(path), [cert, *extra], key)  # type: ignore[arg-type]


def load_candidates(
    folder: Path, password: bytes | None = None
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every certificate file (PEM/DER pairs, PKCS#12) in the folder, and the files that
    could not be read, with why."""
    candidates: list[Candidate] = []
    unreadable: list[tuple[str, str]] = []
    if not folder.is_dir():
        return candidates, unreadable
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix.lower() in PKCS12_SUFFIXES:
            try:
                candidates.append(_load_pkcs12(path, password))
            except (OSError, ValueError) as exc:
                unreadable.append((str(path), str(exc)))
            continue
        if path.suffix.lower() not in CERT_SUFFIXES:
            continue
        try:
            data = path.read_bytes()
            chain = _load_certs(data)
            key = _load_key(path, data)
        except (OSError, ValueError, TypeError) as exc:
            unreadable.append((str(path), f"cannot be read: {exc}"))
            continue
        if not chain:
            unreadable.append((str(path), "holds no certificate"))
            continue
        candidates.append(Candidate.build(str(path), chain, key))  # type: ignore[arg-type]
    return candidates, unreadable


def load_trust_anchors(folder: Path) -> list[x509.Certificate]:
    anchors: list[x509.Certificate] = []
    if not folder.is_dir():
        return anchors
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in CERT_SUFFIXES or not path.is_file():
            continue
        try:
            data = path.read_bytes()
            if b"-----BEGIN X509 CRL-----" in data and b"-----BEGIN CERTIFICATE-----" not in data:
                continue  # a CRL saved as .pem
            anchors.extend(_load_certs(data))
        except (OSError, ValueError) as exc:
            log.warning("trust_anchor_unreadable", path=str(path), reason=str(exc))
    return anchors


def load_crls(folder: Path) -> list[LoadedCrl]:
    """CRLs in trust_dir: *.crl (PEM or DER) and PEM files holding an X509 CRL."""
    crls: list[LoadedCrl] = []
    if not folder.is_dir():
        return crls
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in (".crl", ".pem"):
            continue
        try:
            data = path.read_bytes()
            if b"-----BEGIN X509 CRL-----" in data:
                crls.append(LoadedCrl(str(path), x509.load_pem_x509_crl(data)))
            elif path.suffix.lower() == ".crl":
                crls.append(LoadedCrl(str(path), x509.load_der_x509_crl(data)))
        except (OSError, ValueError) as exc:
            log.warning("crl_unreadable", path=str(path), reason=str(exc))
    return crls


def write_generated(folder: Path, fqdn: str, now: dt.datetime, key_type: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generated = generate_self_signed(fqdn, now, key_type=key_type)
    # Names are built whole: Path.with_suffix would take an FQDN's last label for a suffix.
    key_path = folder / f"selfsigned-{fqdn}.key"
    # The key is created 0600 from the start: never world-readable, not even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(generated.private_key_pem)
    os.chmod(key_path, 0o600)
    cert_path = folder / f"selfsigned-{fqdn}.crt"
    cert_path.write_bytes(generated.certificate_pem)
    return cert_path


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    selection: Selection
    certificate: Candidate
    trust_anchors: tuple[x509.Certificate, ...]
    revocation: RevocationChecker


def prepare_credentials(
    config: Config, now: dt.datetime, already_reported: set[tuple[str, str, str]] | None = None
) -> ServerCredentials:
    """Choose our certificate (generating one if none is usable) and load trust anchors,
    logging every skipped file (once: `already_reported` remembers across reloads), the
    choice, and the anchors."""
    reported = already_reported if already_reported is not None else set()
    folder = config.tls.certificate_dir
    candidates, unreadable = load_candidates(folder, pkcs12_password(config))
    for bad_path, reason in unreadable:
        if (bad_path, "", reason) not in reported:
            reported.add((bad_path, "", reason))
            # A certificate that was put there on purpose and cannot be opened (a wrong
            # PKCS#12 password, most often) is an error, not a quiet fallback.
            log.error("server_certificate_unreadable", path=bad_path, reason=reason)
    selection = choose_certificate(candidates, config.server.fqdn, now)
    for skipped in selection.skipped:
        key = (skipped.candidate.path, skipped.candidate.info.thumbprint_sha1, skipped.reason)
        if key in reported:
            continue
        reported.add(key)
        log.warning(
            "server_certificate_skipped",
            path=skipped.candidate.path,
            reason=skipped.reason,
            **skipped.candidate.info.log_fields(),
        )
    if selection.chosen is None:
        try:
            path = write_generated(folder, config.server.fqdn, now, config.tls.generated_key_type)
        except OSError as exc:
            raise CertificateSetupError(
                f"no usable certificate in {folder} and cannot write a self-signed one there: {exc}"
            ) from exc
        candidates, _ = load_candidates(folder)
        selection = choose_certificate(
            [c for c in candidates if c.path == str(path)], config.server.fqdn, now
        )
        if selection.chosen is None:
            raise CertificateSetupError(
                f"generated certificate {path} is unusable: {selection.reason}"
            )
        log.info(
            "server_certificate_generated",
            path=str(path),
            fqdn=config.server.fqdn,
            key_type=config.tls.generated_key_type,
            key_path=str(path.with_suffix(".key")),
            **selection.chosen.info.log_fields(),
        )
    chosen = selection.chosen
    assert chosen is not None
    log.info(
        "server_certificate_selected",
        path=chosen.path,
        why=selection.reason,
        ekus=",".join(chosen.info.ekus),
        **chosen.info.log_fields(),
    )
    anchors = load_trust_anchors(config.tls.trust_dir)
    if anchors:
        for anchor in anchors:
            info = describe(anchor)
            log.info(
                "trust_anchor_loaded",
                subject=info.subject,
                serial=info.serial,
                thumbprint_sha1=info.thumbprint_sha1,
                not_after=info.not_after.isoformat(),
            )
    else:
        log.warning(
            "trust_anchors_missing",
            trust_dir=str(config.tls.trust_dir),
            consequence="every TLS peer will be refused: put the CA certificates that "
            "your gateways' and PBXs' certificates chain to in trust_dir",
        )
    revocation = RevocationChecker(load_crls(config.tls.trust_dir), anchors)
    for item in revocation.usable:
        log.info(
            "crl_loaded",
            path=item.path,
            issuer=item.crl.issuer.rfc4514_string(),
            revoked=len(item.crl),
            next_update=item.crl.next_update_utc.isoformat() if item.crl.next_update_utc else None,
        )
    for problem in revocation.problems:
        log.error("crl_unusable", path=problem.path, reason=problem.problem)
    for problem in revocation.stale(now):
        log.warning("crl_stale", path=problem.path, reason=problem.problem)
    return ServerCredentials(selection, chosen, tuple(anchors), revocation)
