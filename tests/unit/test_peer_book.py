"""The peer certificate book (pure) and the watch around it, with an injected clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from structlog.testing import capture_logs

from sipserver.config.loader import parse_config
from sipserver.pki.certinfo import CertInfo, describe
from sipserver.pki.peer_book import PeerBook
from sipserver.server.credentials import Credentials
from sipserver.server.live_config import LiveConfig
from sipserver.server.peer_watch import PeerWatch, load_book
from tests.certs import NOW, Issued, make_ca, make_leaf
from tests.configs import peer, table

CA = make_ca("Peer Book CA")


def cert(days: int) -> tuple[Issued, CertInfo]:
    issued = make_leaf(CA, dns=["gw1.example.test"], not_after=NOW + dt.timedelta(days=days))
    return issued, describe(issued.cert)


def test_the_book_tells_first_same_and_changed_certificates_apart() -> None:
    book = PeerBook()
    _, first = cert(100)
    seen = book.observe("gw1", "gw1.example.test", first, "san_dns", "inbound", NOW)
    assert seen.first and seen.previous is None
    later = NOW + dt.timedelta(hours=5)
    again = book.observe("gw1", "gw1.example.test", first, "san_dns", "inbound", later)
    assert not again.first and again.previous is None
    assert again.record.first_seen == NOW and again.record.last_seen == later
    _, renewed = cert(400)
    changed = book.observe("gw1", "gw1.example.test", renewed, "san_dns", "inbound", later)
    assert changed.previous is not None and changed.previous.serial == first.serial
    assert changed.record.serial == renewed.serial and changed.record.first_seen == later


def test_a_trust_anchor_that_expires_first_sets_the_date() -> None:
    book = PeerBook()
    _, leaf = cert(300)
    anchor = describe(make_ca("Short CA", not_after=NOW + dt.timedelta(days=20)).cert)
    record = book.observe("gw1", "gw1.example.test", leaf, "san_dns", "inbound", NOW, anchor).record
    assert record.anchor_first and record.expires == anchor.not_after
    assert [r.peer for r, n in book.notices(NOW, 30)] == ["gw1"]
    assert book.notices(NOW, 10) == []


def test_the_book_survives_its_json_form() -> None:
    book = PeerBook()
    _, info = cert(50)
    book.observe("gw1", "gw1.example.test", info, "san_dns", "outbound", NOW)
    again = PeerBook.from_json(book.to_json())
    assert again.records == book.records
    assert PeerBook.from_json({"peers": "garbage"}).records == {}


def test_merging_keeps_per_peer_the_certificate_seen_last() -> None:
    ours, theirs = PeerBook(), PeerBook()
    _, old = cert(50)
    _, new = cert(400)
    ours.observe("gw1", "gw1.example.test", new, "san_dns", "inbound", NOW)
    theirs.observe("gw1", "gw1.example.test", old, "san_dns", "inbound", NOW - dt.timedelta(1))
    theirs.observe("gw2", "gw2.example.test", old, "san_dns", "inbound", NOW)
    ours.merge(theirs)
    assert ours.records["gw1"].serial == new.serial  # ours was seen later
    assert ours.records["gw2"].serial == old.serial  # only they saw gw2
    theirs.merge(ours)
    assert theirs.records == ours.records


def test_warnings_come_once_a_utc_day_and_the_table_is_saved(tmp_path: Path) -> None:
    config = parse_config(
        table("server", {"fqdn": "sip.example.test"})
        + table("tls", {"peer_table": str(tmp_path / "peers.json"), "peer_expiry_warning_days": 30})
        + peer("gw1", kind="gateway", health_check=None)
    )
    watch = PeerWatch(LiveConfig(config), Credentials(on_change=lambda _: None))
    _, info = cert(10)
    day = NOW.replace(hour=23, minute=0, second=0, microsecond=0)
    with capture_logs() as logs:
        watch.observed(config.peer("gw1"), info, "san_dns", "inbound", day)
        watch.check(day + dt.timedelta(minutes=30))  # same UTC day: no second warning
        watch.check(day + dt.timedelta(hours=1, minutes=1))  # the next UTC day: again
    warnings = [e for e in logs if e["event"] == "peer_certificate_expiring"]
    assert len(warnings) == 2 and warnings[0]["peer"] == "gw1"
    assert load_book(tmp_path / "peers.json").records["gw1"].serial == info.serial
    assert watch.expiring(day) == ["gw1"]
