"""Which context a core event's line carries: the fields bound to the connection whose task
writes it when the event is about that connection, none of them when it is about another
(a call line written from the target's connection must not name the target's certificate
as the caller's), and a certificate field as that certificate's own fields."""

from __future__ import annotations

import contextvars
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from sipserver.log import bind_connection, clear_connection, configure_logging, connection_remote
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.events import TransactionTimedOut
from sipserver.server import event_log
from sipserver.server.event_log import log_event

LinesOf = Callable[[Callable[[], None]], list[Any]]
OURS = "192.0.2.1:5061"
OTHER = "192.0.2.9:5060"


@pytest.fixture
def lines_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[LinesOf]:
    """The JSON lines written while a function runs in a context of its own."""
    out = io.StringIO()
    before = structlog.get_config()
    configure_logging("info", "json", stream=out)
    # A fresh logger: the module's own was cached on first use, with its stream then.
    monkeypatch.setattr(event_log, "log", structlog.get_logger("sipserver"))

    def lines(run: Callable[[], None]) -> list[Any]:
        contextvars.Context().run(run)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    yield lines
    structlog.configure(**before)


def timed_out(remote: str) -> TransactionTimedOut:
    return TransactionTimedOut(call_id="c1", timer="B", method="INVITE", remote=remote)


def bound() -> None:
    bind_connection(transport="tls", remote=OURS, connection_id=7)
    bind_connection(peer="pbx1", peer_cert_thumbprint_sha256="AB" * 32)


def test_an_event_about_this_connection_carries_its_bound_fields(lines_of: LinesOf) -> None:
    def run() -> None:
        bound()
        log_event(timed_out(OURS))

    (line,) = lines_of(run)
    assert line["remote"] == OURS and line["connection_id"] == 7 and line["peer"] == "pbx1"
    assert line["peer_cert_thumbprint_sha256"] == "AB" * 32


def test_an_event_about_another_connection_carries_none_of_this_ones_fields(
    lines_of: LinesOf,
) -> None:
    def run() -> None:
        bound()
        log_event(timed_out(OTHER))
        log_event(timed_out(OURS))  # and the context is still there afterwards

    other, ours = lines_of(run)
    assert other["remote"] == OTHER and other["event"] == "sip_transaction_timeout"
    assert not {"connection_id", "transport", "peer", "peer_cert_thumbprint_sha256"} & set(other)
    assert ours["connection_id"] == 7


def test_a_task_cleared_of_its_connection_blanks_nothing_and_knows_no_remote(
    lines_of: LinesOf,
) -> None:
    seen: list[str | None] = []

    def run() -> None:
        bound()
        clear_connection()
        seen.append(connection_remote())
        log_event(timed_out(OTHER))

    (line,) = lines_of(run)
    assert seen == [None]
    assert line["remote"] == OTHER and "connection_id" not in line


@pytest.mark.parametrize("prefix", ["", "target_cert_"])
def test_certificate_fields_are_the_certificates_own_and_a_copy(prefix: str) -> None:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    first, second = (
        CertInfo(
            f"CN={name}",
            "CN=CA",
            serial,
            "11" * 20,
            thumb * 32,
            when,
            when,
            (name,),
            (name,),
            (),
            (),
            True,
            (),
            False,
        )
        for name, serial, thumb in (("gw1", "0A", "CD"), ("pbx1", "0B", "EF"))
    )
    fields = first.log_fields(prefix)
    assert fields[f"{prefix}subject"] == "CN=gw1" and fields[f"{prefix}serial"] == "0A"
    fields[f"{prefix}serial"] = "changed"  # the caller's copy: the next call is unchanged
    assert first.log_fields(prefix)[f"{prefix}serial"] == "0A"
    assert second.log_fields(prefix)[f"{prefix}thumbprint_sha256"] == "EF" * 32
