"""What the shell counts from the core's events for the per-peer metrics: refusals by
peer and a closed set of reasons, setup time by dial plan."""

from __future__ import annotations

from sipserver.proxy.events import Answered, CallCompleted, MessageMalformed, UnknownSourceRefused
from sipserver.server.snapshot import SETUP_BUCKETS, ServerStats


def completed(plan: str | None, setup_ms: float) -> CallCompleted:
    return CallCompleted(
        method="INVITE",
        status=200,
        detail=None,
        dial_plan=plan,
        security="unsecured",
        peer="gw1",
        peer_fqdn="gw1.example.test",
        transport="udp",
        remote="192.0.2.10:5060",
        connection_id=None,
        peer_cert=None,
        target_cert=None,
        target="pbx1",
        target_fqdn="pbx1.example.test",
        target_transport="udp",
        target_address=None,
        target_connection_id=None,
        attempts=1,
        failed_attempts=None,
        our_thumbprint_sha1=None,
        setup_ms=setup_ms,
    )


def test_refusals_are_counted_by_peer_and_a_closed_reason_never_the_senders_text() -> None:
    stats = ServerStats()
    for n in range(1000):
        stats.note_event(
            UnknownSourceRefused(
                action="403",
                status=403,
                method=f"X{n}",
                transport="udp",
                remote=f"198.51.100.{n % 250}:5060",
            )
        )
        stats.note_event(
            MessageMalformed(
                kind="request",
                action="answered",
                reason=f"Bad line '{n}'",
                status=400,
                transport="udp",
                remote="192.0.2.10:5060",
                peer="gw1",
            )
        )
    stats.note_event(
        Answered(
            method="REGISTER",
            status=403,
            reason="Only softphones register",
            transport="udp",
            remote="192.0.2.10:5060",
            peer="gw1",
            peer_fqdn="gw1.example.test",
        )
    )
    assert stats.refusals == {
        ("", "unknown_source"): 1000,
        ("gw1", "malformed_request"): 1000,
        ("gw1", "request_refused_4xx"): 1,
    }


def test_setup_time_fills_its_dial_plans_histogram_and_in_dialog_requests_do_not() -> None:
    stats = ServerStats()
    for ms in (40, 90, 3000, 45_000):
        stats.note_event(completed("main", ms))
    stats.note_event(completed(None, 10))  # a BYE routed in a dialog
    histogram = stats.setup_seconds["main"]
    assert list(stats.setup_seconds) == ["main"] and histogram.observed == 4
    buckets = dict(histogram.cumulative())
    assert (buckets["0.05"], buckets["0.1"], buckets["5.0"], buckets["30.0"]) == (1, 2, 3, 3)
    assert buckets["+Inf"] == 4 and len(buckets) == len(SETUP_BUCKETS) + 1
    assert histogram.total == 48.13
