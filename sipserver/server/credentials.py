"""Our TLS identity while the server runs: the certificate in use and the contexts built
from it, daily expiry warnings for it and for the trust anchors (naming the peers each
anchor serves), and the switch to a better or still-valid certificate."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import structlog
from OpenSSL import SSL

from sipserver.certstore import (
    CertificateSetupError,
    ServerCredentials,
    load_candidates,
    pkcs12_password,
    prepare_credentials,
    setup_problems,
)
from sipserver.config.host import HostDefaults
from sipserver.config.schema import Config
from sipserver.pki.certinfo import CertInfo, describe
from sipserver.pki.expiry import DailyOnce, expiry_notice
from sipserver.pki.select import choose_certificate
from sipserver.transport.keylog import KeyLog
from sipserver.transport.tls_context import build_client_context, build_server_context

log = structlog.get_logger("sipserver")


class Credentials:
    def __init__(
        self, on_change: Callable[[CertInfo], None], *, speaks_for_server: bool = True
    ) -> None:
        """`speaks_for_server`: this process logs the daily expiry warnings (with workers,
        worker 0 does, so that a server says each once a day, not once per worker)."""
        self.speaks_for_server = speaks_for_server
        self.current: ServerCredentials | None = None
        self.anchors: tuple[CertInfo, ...] = ()  # the trust anchors, described once
        self.server_context: SSL.Context | None = None
        self.client_context: SSL.Context | None = None
        self._on_change = on_change
        self._daily = DailyOnce()
        self._skips_reported: set[tuple[str, str, str]] = set()  # each logged once
        # Issuer (RFC 4514) -> peers seen with certificates from it, to say who an
        # expiring CA affects.
        self._peers_by_issuer: dict[str, set[str]] = {}
        self.keylog: KeyLog | None = None  # tls.keylog_file, while it is set

    def prepare(self, config: Config, now: dt.datetime) -> ServerCredentials:
        """Choose and load (raises CertificateSetupError), without installing. What
        `check-config` refuses is refused here too, at start and on every reload."""
        problems = setup_problems(config, HostDefaults.of_this_host().state_dir)
        if problems:
            message = "; ".join(f"{key}: {problem}" for key, problem in problems)
            raise CertificateSetupError(message, problems[0][0])
        return prepare_credentials(config, now, self._skips_reported)

    def install(self, credentials: ServerCredentials, config: Config) -> None:
        min_version = config.tls.min_version
        server = build_server_context(
            credentials.certificate, credentials.trust_anchors, min_version
        )
        client = build_client_context(
            credentials.certificate, credentials.trust_anchors, min_version
        )
        self._use_keylog(config.tls.keylog_file)
        if self.keylog is not None:
            self.keylog.attach(server)
            self.keylog.attach(client)
        # New connections use these; established ones keep theirs.
        self.current, self.server_context, self.client_context = credentials, server, client
        self.anchors = tuple(describe(anchor) for anchor in credentials.trust_anchors)
        self._on_change(credentials.certificate.info)

    def _use_keylog(self, path: Path | None) -> None:
        """Open (or, after a reload, switch or close) the TLS key log, and say loudly
        that it is on: whoever reads it can decrypt the calls."""
        if self.keylog is not None and self.keylog.path == path:
            return
        if self.keylog is not None:
            self.keylog.close()
            self.keylog = None
            log.info("tls_keylog_off")
        if path is not None:
            try:
                self.keylog = KeyLog(path)
            except OSError as exc:  # check-config's checks make this rare
                log.error("tls_keylog_failed", path=str(path), reason=exc.strerror)
                return
            log.warning(
                "tls_keylog_on",
                path=str(path),
                consequence="every TLS session's secrets are written there: anyone who can"
                " read the file can decrypt captured calls; unset tls.keylog_file when done",
            )

    def note_issuer(self, peer: str, issuer: str) -> None:
        self._peers_by_issuer.setdefault(issuer, set()).add(peer)

    def anchor_named(self, subject: str) -> CertInfo | None:
        """The trust anchor with this subject (a peer's issuer), if we hold it."""
        return next((info for info in self.anchors if info.subject == subject), None)

    def in_use(self) -> list[tuple[str, CertInfo]]:
        """(role, certificate) for our certificate and each trust anchor."""
        if self.current is None:
            return []
        anchors = [("trust_anchor", info) for info in self.anchors]
        return [("server", self.current.certificate.info), *anchors]

    def check(self, config: Config, now: dt.datetime) -> None:
        """Expiry warnings (each once a UTC day), then a switch when one is due."""
        if self.current is None:
            return
        ours = self.current.certificate
        notice = expiry_notice(ours.info.not_after, now) if self.speaks_for_server else None
        if notice is not None and self._daily.due(f"server:{ours.info.thumbprint_sha1}", now):
            if notice.expired:
                log.error(
                    "server_certificate_expired",
                    days_since=notice.days,
                    path=ours.path,
                    **ours.info.log_fields(),
                )
            else:
                log.warning(
                    "server_certificate_expiring",
                    days_left=notice.days,
                    path=ours.path,
                    **ours.info.log_fields(),
                )
        for info in self.anchors if self.speaks_for_server else ():
            self._check_anchor(info, now)
        self._reselect(config, now)

    def _check_anchor(self, info: CertInfo, now: dt.datetime) -> None:
        notice = expiry_notice(info.not_after, now)
        if notice is None or not self._daily.due(f"anchor:{info.thumbprint_sha1}", now):
            return
        fields = {
            "affected_peers": sorted(self._peers_by_issuer.get(info.subject, set())),
            "subject": info.subject,
            "serial": info.serial,
            "thumbprint_sha1": info.thumbprint_sha1,
            "not_after": info.not_after.isoformat(),
        }
        if notice.expired:
            log.error("trust_anchor_expired", days_since=notice.days, **fields)
        else:
            log.warning("trust_anchor_expiring", days_left=notice.days, **fields)

    def _reselect(self, config: Config, now: dt.datetime) -> None:
        """Switch when the certificate in use expired or a better one appeared."""
        assert self.current is not None
        in_use = self.current.certificate
        try:
            candidates, _ = load_candidates(config.tls.certificate_dir, pkcs12_password(config))
        except CertificateSetupError as exc:
            log.error("server_certificate_change_failed", error=str(exc))
            return
        selection = choose_certificate(candidates, config.server.fqdn, now)
        current = in_use.info.thumbprint_sha1
        if selection.chosen is None or selection.chosen.info.thumbprint_sha1 == current:
            if selection.chosen is None and not in_use.info.valid_at(now):
                log.error(
                    "server_certificate_unusable",
                    reason="the certificate in use is no longer valid and no other is usable",
                    path=in_use.path,
                )
            return
        try:
            credentials = self.prepare(config, now)
        except CertificateSetupError as exc:
            log.error("server_certificate_change_failed", error=str(exc))
            return
        self.install(credentials, config)
        log.info(
            "server_certificate_changed",
            previous_thumbprint_sha1=current,
            thumbprint_sha1=credentials.certificate.info.thumbprint_sha1,
            path=credentials.certificate.path,
        )
