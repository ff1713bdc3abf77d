"""Knowing before a gateway's certificate expires. Every allow-listed peer's last
certificate (presented to us, or verified on our leg to it, health checks included) is
kept in a small JSON table in the state folder; from tls.peer_expiry_warning_days before it
(or its trust anchor) expires a warning is logged once a day, and a different certificate
than last time is logged as a change, so renewals are visible and a strange issuer stands
out."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog

from sipserver.config.schema import PeerSettings
from sipserver.pki.certinfo import CertInfo
from sipserver.pki.expiry import DailyOnce, expiry_notice
from sipserver.pki.identity import match_peer
from sipserver.pki.peer_book import PeerBook, PeerCertificate
from sipserver.server.credentials import Credentials
from sipserver.server.live_config import LiveConfig

log = structlog.get_logger("sipserver")
SAVE_EVERY = 300.0  # seconds: last-seen times are written at most this often
# Refusals that mean "your certificate is too old" rather than "who are you?".
EXPIRED_REASONS = {"certificate_expired", "certificate_not_yet_valid", "untrusted_chain"}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The table's lock (a file beside it): one worker at a time reads-merges-writes."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_book(path: Path) -> PeerBook:
    try:
        return PeerBook.from_json(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError):
        return PeerBook()


class PeerWatch:
    def __init__(
        self,
        config: LiveConfig,
        credentials: Credentials,
        *,
        speaks_for_server: bool = True,
    ) -> None:
        """`speaks_for_server`: this process logs the daily expiry warnings; with workers
        every one records what it sees in the shared table, and worker 0 warns for all."""
        self._config = config
        self._credentials = credentials
        self.speaks_for_server = speaks_for_server
        self.book = PeerBook()
        self._daily = DailyOnce()
        self._dirty = False
        self._saved_at: dt.datetime | None = None

    @property
    def path(self) -> Path:
        return self._config.current.tls.peer_table

    def load(self) -> None:
        self.book = load_book(self.path)
        log.info("peer_table_loaded", path=str(self.path), peers=len(self.book.records))

    def save(self, now: dt.datetime | None = None) -> None:
        """Merge with what the file holds (our other workers write it too), then write it
        atomically (a temporary file renamed over the old one), under a lock."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path):
                self._merge_file()
                fd, tmp = tempfile.mkstemp(prefix=".peers-", dir=path.parent)
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(self.book.to_json(), out, indent=1)
                os.replace(tmp, path)
        except OSError as exc:
            log.warning("peer_table_write_failed", path=str(path), reason=str(exc))
            return
        self._dirty, self._saved_at = False, now

    def _merge_file(self) -> None:
        self.book.merge(load_book(self.path))

    def observed(
        self,
        peer: PeerSettings,
        info: CertInfo,
        identity_source: str,
        direction: str,
        now: dt.datetime,
    ) -> None:
        anchor = self._credentials.anchor_named(info.issuer)
        seen = self.book.observe(
            peer.name, peer.fqdn, info, f"{identity_source} {peer.fqdn}", direction, now, anchor
        )
        if seen.previous is not None:
            old, new = seen.previous, seen.record
            (log.info if old.issuer == new.issuer else log.warning)(
                "peer_certificate_changed",
                peer=peer.name,
                peer_fqdn=peer.fqdn,
                issuer_changed=old.issuer != new.issuer,
                **old.log_fields("old_"),
                **new.log_fields("new_"),
                old_last_seen=old.last_seen.isoformat(),
            )
        self._warn(seen.record, now)
        if seen.first or seen.previous is not None:
            self.save(now)
        else:
            self._dirty = True
            if self._saved_at is None or (now - self._saved_at).total_seconds() > SAVE_EVERY:
                self.save(now)

    def refused(self, info: CertInfo | None, reason: str, now: dt.datetime) -> None:
        """A handshake refused for an expired (or not yet valid, or no longer trusted)
        certificate from an allow-listed peer: an error once a day while it keeps trying."""
        if info is None or reason not in EXPIRED_REASONS:
            return
        peer = match_peer(info, self._config.current.peers).peer
        if not isinstance(peer, PeerSettings):
            return
        if not self._daily.due(f"refused:{peer.name}:{info.thumbprint_sha256}", now):
            return
        notice = expiry_notice(info.not_after, now, 0)
        log.error(
            "peer_certificate_expired",
            peer=peer.name,
            peer_fqdn=peer.fqdn,
            reason=reason,
            days_since=notice.days if notice is not None and notice.expired else None,
            thumbprint_sha1=info.thumbprint_sha1,
            serial=info.serial,
            issuer=info.issuer,
            not_after=info.not_after.isoformat(),
            fix="the peer must present a renewed certificate (see docs/operations.md: Certificate renewals)",
        )

    def check(self, now: dt.datetime) -> None:
        """Daily warnings for every allow-listed peer in the window (what any worker saw);
        save what changed."""
        if self._dirty:
            self.save(now)
        elif self.speaks_for_server:
            with contextlib.suppress(OSError), _locked(self.path):
                self._merge_file()
        names = [p.name for p in self._config.current.peers]
        for record, _ in self.book.notices(now, self._warn_days, names):
            self._warn(record, now)

    def days_left(self, now: dt.datetime) -> list[tuple[str, float]]:
        names = {p.name for p in self._config.current.peers}
        return [
            (r.peer, round(r.days_left(now), 3))
            for r in self.book.records.values()
            if r.peer in names
        ]

    def expiring(self, now: dt.datetime) -> list[str]:
        names = [p.name for p in self._config.current.peers]
        return sorted(r.peer for r, _ in self.book.notices(now, self._warn_days, names))

    @property
    def _warn_days(self) -> int:
        return self._config.current.tls.peer_expiry_warning_days

    def _warn(self, record: PeerCertificate, now: dt.datetime) -> None:
        if not self.speaks_for_server:
            return
        notice = expiry_notice(record.expires, now, self._warn_days)
        if notice is None or notice.expired:
            return  # an expired one cannot connect: `refused` reports it while it tries
        if not self._daily.due(f"expiring:{record.peer}:{record.thumbprint_sha256}", now):
            return
        log.warning(
            "peer_certificate_expiring",
            peer=record.peer,
            peer_fqdn=record.fqdn,
            days_left=notice.days,
            expires=record.expires.isoformat(),
            expires_by="trust anchor " + (record.anchor_subject or "")
            if record.anchor_first
            else "certificate",
            thumbprint_sha1=record.thumbprint_sha1,
            serial=record.serial,
            issuer=record.issuer,
        )
