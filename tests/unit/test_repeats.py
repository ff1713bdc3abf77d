"""Refusal storms are summarised by event, source address and kind of reason: the text a
sender chooses (quoted parts, numbers) does not make a new kind."""

from __future__ import annotations

from structlog.testing import capture_logs

from sipserver.server.repeats import MAX_KIND, RepeatFilter, reason_kind


def test_what_the_sender_chose_is_taken_out_of_the_kind() -> None:
    assert reason_kind("Malformed header line 'bad-line-7'") == "Malformed header line '…'"
    assert reason_kind('Malformed Contact "<sip:x>;;"') == 'Malformed Contact "…"'
    assert reason_kind("No dial plan of gw1 matches 5551234") == "No dial plan of gwN matches N"
    assert reason_kind("Missing Call-ID") == "Missing Call-ID"
    assert len(reason_kind("x" * 100_000)) == MAX_KIND


def test_five_thousand_different_bad_lines_are_one_line_and_one_count() -> None:
    repeats = RepeatFilter()
    logged = [
        repeats.first("sip_request_malformed", "198.51.100.7:5060", f"Bad '{n}'", 0.0, 10.0)
        for n in range(5000)
    ]
    assert logged.count(True) == 1 and logged[0]
    # Another address, or another kind, is logged at once.
    assert repeats.first("sip_request_malformed", "198.51.100.8:5060", "Bad 'x'", 0.0, 10.0)
    assert repeats.first("sip_request_malformed", "198.51.100.7:5060", "Missing To", 0.0, 10.0)
    with capture_logs() as logs:
        repeats.flush(10.0, 10.0)
    assert [(e["source"], e["reason"], e["count"]) for e in logs] == [
        ("198.51.100.7", "Bad '…'", 4999)
    ]
