"""What we know of each allow-listed peer's certificate: the last one it presented (or that
we verified on a leg to it), when we first and last saw it, and what to warn about. Pure:
the shell loads and saves the JSON form and logs what `observe` and `notices` return."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sipserver.pki.certinfo import CertInfo
from sipserver.pki.expiry import ExpiryNotice, expiry_notice

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    peer: str
    fqdn: str
    subject: str
    issuer: str
    serial: str
    thumbprint_sha1: str
    thumbprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    matched: str  # the identity that matched the allow-list, e.g. "san_dns gw1.example.test"
    direction: str  # inbound (it called us) | outbound (we verified it on a leg to it)
    first_seen: dt.datetime
    last_seen: dt.datetime
    anchor_subject: str | None = None  # the trust anchor it chains to, when known
    anchor_not_after: dt.datetime | None = None

    @property
    def expires(self) -> dt.datetime:
        """When calls with this certificate stop working: its own not_after, or its trust
        anchor's when that comes first."""
        if self.anchor_not_after is not None and self.anchor_not_after < self.not_after:
            return self.anchor_not_after
        return self.not_after

    @property
    def anchor_first(self) -> bool:
        return self.expires != self.not_after

    def days_left(self, now: dt.datetime) -> float:
        return (self.expires - now).total_seconds() / 86400

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerCertificate:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = data.get(field.name)
            if field.name in _TIMES and value is not None:
                value = dt.datetime.fromisoformat(value)
            values[field.name] = value
        return cls(**values)

    def log_fields(self, prefix: str = "") -> dict[str, str | None]:
        return {
            f"{prefix}issuer": self.issuer,
            f"{prefix}serial": self.serial,
            f"{prefix}thumbprint_sha1": self.thumbprint_sha1,
            f"{prefix}thumbprint_sha256": self.thumbprint_sha256,
            f"{prefix}not_after": self.not_after.isoformat(),
        }


_TIMES = {"not_before", "not_after", "first_seen", "last_seen", "anchor_not_after"}


@dataclass(frozen=True, slots=True)
class Observation:
    record: PeerCertificate
    first: bool  # the first certificate we ever saw from this peer
    previous: PeerCertificate | None  # set when it presented a different one than last time


class PeerBook:
    def __init__(self, records: Iterable[PeerCertificate] = ()) -> None:
        self.records: dict[str, PeerCertificate] = {r.peer: r for r in records}

    def observe(
        self,
        peer: str,
        fqdn: str,
        info: CertInfo,
        matched: str,
        direction: str,
        now: dt.datetime,
        anchor: CertInfo | None = None,
    ) -> Observation:
        known = self.records.get(peer)
        same = known is not None and known.thumbprint_sha256 == info.thumbprint_sha256
        record = PeerCertificate(
            peer=peer,
            fqdn=fqdn,
            subject=info.subject,
            issuer=info.issuer,
            serial=info.serial,
            thumbprint_sha1=info.thumbprint_sha1,
            thumbprint_sha256=info.thumbprint_sha256,
            not_before=info.not_before,
            not_after=info.not_after,
            matched=matched,
            direction=direction,
            first_seen=known.first_seen if same and known else now,
            last_seen=now,
            anchor_subject=anchor.subject if anchor else None,
            anchor_not_after=anchor.not_after if anchor else None,
        )
        self.records[peer] = record
        return Observation(record, known is None, None if same else known)

    def merge(self, other: PeerBook) -> None:
        """Take what another process saw: per peer, the certificate seen last."""
        for name, theirs in other.records.items():
            ours = self.records.get(name)
            if ours is None or theirs.last_seen > ours.last_seen:
                self.records[name] = theirs

    def notices(
        self, now: dt.datetime, warn_days: int, peers: Iterable[str] | None = None
    ) -> list[tuple[PeerCertificate, ExpiryNotice]]:
        """Peers whose certificate (or its trust anchor) expires within `warn_days` or has
        expired, among `peers` (all when None)."""
        wanted = set(peers) if peers is not None else None
        out = []
        for record in self.records.values():
            if wanted is not None and record.peer not in wanted:
                continue
            notice = expiry_notice(record.expires, now, warn_days)
            if notice is not None:
                out.append((record, notice))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "peers": {name: r.to_json() for name, r in sorted(self.records.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> PeerBook:
        """Tolerant: a file we cannot read as a table of peers gives an empty book."""
        if not isinstance(data, dict) or not isinstance(data.get("peers"), dict):
            return cls()
        records = []
        for item in data["peers"].values():
            try:
                records.append(PeerCertificate.from_json(item))
            except (TypeError, ValueError):
                continue
        return cls(records)
