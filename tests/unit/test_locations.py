"""Targets located through DNS in the pure core (RFC 3263): a call parks while the shell
looks its target up, then tries each address the lookup gave in order; answers are
cached for their TTL; a failed lookup is one more failover step. And RFC 2782 ordering."""

from __future__ import annotations

import dns.name
import dns.rdtypes.IN.SRV
from hypothesis import given
from hypothesis import strategies as st

from sipserver.config.loader import parse_config
from sipserver.proxy.core import SipCore
from sipserver.proxy.locations import Located, Lookup
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Request, Response, parse_message
from sipserver.transport.dns import rfc2782_order
from tests.configs import dial_plan, peer, table

CONFIG = parse_config(
    table("server", {"fqdn": "sip.example.test", "sip_port": 5060, "tls_port": 5061})
    + peer("gw1", kind="gateway", addresses=["192.0.2.10"], transport="udp", health_check=None)
    + peer("pbx", addresses=[], transport="udp", health_check=None)
    + peer("backup", addresses=["192.0.2.30"], transport="udp", health_check=None)
    + dial_plan("main", "unsecured", ["pbx", "backup"])
)
CALLER = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.10", 5060))
LOOKUP = Lookup("pbx.example.test", Transport.UDP, 5060)
FOUND = Located((("198.51.100.1", 5070), ("198.51.100.2", 5080)), 300.0, "srv")


def invite(call: str = "1") -> bytes:
    return (
        "INVITE sip:5000@sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKc{call}\r\n"
        f"From: <sip:a@gw1.example.test>;tag=f{call}\r\nTo: <sip:5000@sip.example.test>\r\n"
        f"Call-ID: call-{call}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def the_lookup(core: SipCore) -> Lookup:
    """The one lookup the core asks for."""
    (lookup,) = core.take_lookups()
    return lookup


def parse(t: Transmit) -> Request | Response:
    message = parse_message(t.data)
    assert isinstance(message, (Request, Response))
    return message


def test_a_call_waits_for_the_lookup_then_tries_each_address_in_order() -> None:
    core = SipCore(CONFIG)
    out = core.receive_datagram(invite(), CALLER, 0.0)
    assert [getattr(parse(t), "status", None) for t in out] == [100]  # nothing sent on yet
    assert core.take_lookups() == [LOOKUP]
    out = core.located(LOOKUP, FOUND, 0.1)
    (first,) = out
    request = parse(first)
    assert first.flow.remote == ("198.51.100.1", 5070)
    assert first.flow.server_name == "pbx.example.test"
    assert isinstance(request, Request) and request.uri == "sip:5000@pbx.example.test"
    # The first address fails (e.g. ICMP refused on UDP is reported as a failure): the next.
    (second,) = core.transport_failed(first.flow, "connection refused", 0.2)
    assert second.flow.remote == ("198.51.100.2", 5080)


def test_answers_are_cached_for_their_ttl_and_looked_up_again_after() -> None:
    core = SipCore(CONFIG)
    core.receive_datagram(invite("1"), CALLER, 0.0)
    core.located(the_lookup(core), FOUND, 0.0)
    out = core.receive_datagram(invite("2"), CALLER, 10.0)
    assert not core.take_lookups()
    assert [t.flow.remote for t in out if isinstance(parse(t), Request)] == [("198.51.100.1", 5070)]
    core.receive_datagram(invite("3"), CALLER, 301.0)
    assert core.take_lookups() == [LOOKUP]


def test_one_lookup_serves_every_call_that_waited_for_it() -> None:
    core = SipCore(CONFIG)
    core.receive_datagram(invite("1"), CALLER, 0.0)
    core.receive_datagram(invite("2"), CALLER, 0.0)
    assert core.take_lookups() == [LOOKUP]
    out = core.located(LOOKUP, FOUND, 0.1)
    assert len([t for t in out if isinstance(parse(t), Request)]) == 2


def test_a_failed_lookup_is_a_failover_step_named_in_the_warning() -> None:
    core = SipCore(CONFIG)
    core.receive_datagram(invite(), CALLER, 0.0)
    failed = Located((), 0.0, "failed", "pbx.example.test has no SRV record and no address")
    (attempt,) = core.located(the_lookup(core), failed, 0.1)
    assert attempt.flow.remote == ("192.0.2.30", 5060)  # the next target
    out = core.transport_failed(attempt.flow, "connection refused", 0.2)
    final = parse(out[-1])
    assert isinstance(final, Response) and final.status == 503
    warning = final.headers.get("Warning") or ""
    assert "pbx: pbx.example.test has no SRV record and no address" in warning
    assert "backup: connection refused" in warning


def test_every_address_refused_names_each_in_the_warning() -> None:
    core = SipCore(CONFIG)
    core.receive_datagram(invite(), CALLER, 0.0)
    (first,) = core.located(the_lookup(core), FOUND, 0.1)
    (second,) = core.transport_failed(first.flow, "connection refused", 0.2)
    (third,) = core.transport_failed(second.flow, "connection refused", 0.3)
    out = core.transport_failed(third.flow, "connection refused", 0.4)
    warning = parse(out[-1]).headers.get("Warning") or ""
    assert "pbx at 198.51.100.1:5070: connection refused" in warning
    assert "pbx at 198.51.100.2:5080: connection refused" in warning


def test_a_call_cancelled_while_its_target_is_looked_up_gets_487() -> None:
    core = SipCore(CONFIG)
    core.receive_datagram(invite(), CALLER, 0.0)
    cancel = invite().replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL")
    assert parse(core.receive_datagram(cancel, CALLER, 0.1)[0]).status == 200  # type: ignore[union-attr]
    out = core.located(the_lookup(core), FOUND, 0.2)
    assert [getattr(parse(t), "status", None) for t in out] == [487]


def srv(priority: int, weight: int, host: str) -> dns.rdtypes.IN.SRV.SRV:
    return dns.rdtypes.IN.SRV.SRV(1, 33, priority, weight, 5061, dns.name.from_text(host))  # type: ignore[no-untyped-call]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), min_size=1, max_size=8))
def test_srv_order_is_by_priority_and_keeps_every_record(spec: list[tuple[int, int]]) -> None:
    records = [srv(p, w, f"h{i}.example.test") for i, (p, w) in enumerate(spec)]
    ordered = rfc2782_order(records)
    assert sorted(map(id, ordered)) == sorted(map(id, records))
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


def test_srv_weights_spread_the_first_choice() -> None:
    records = [srv(10, 90, "heavy.example.test"), srv(10, 10, "light.example.test")]
    firsts = [rfc2782_order(records)[0].target.to_text() for _ in range(400)]
    assert 250 < firsts.count("heavy.example.test.") < 400
    assert srv(10, 0, ".").target.to_text() not in [
        r.target.to_text() for r in rfc2782_order([srv(10, 0, "."), *records])
    ]


def test_a_503_from_one_address_moves_on_to_the_next() -> None:
    only_pbx = parse_config(
        table("server", {"fqdn": "sip.example.test"})
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], transport="udp", health_check=None)
        + peer("pbx", addresses=[], transport="udp", health_check=None)
        + dial_plan("main", "unsecured", ["pbx"])
    )
    core = SipCore(only_pbx)
    core.receive_datagram(invite(), CALLER, 0.0)
    (first,) = core.located(the_lookup(core), FOUND, 0.1)
    request = parse(first)
    assert isinstance(request, Request)
    vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
    busy = (
        f"SIP/2.0 503 Busy\r\n{vias}From: {request.headers.get('From')}\r\n"
        f"To: {request.headers.get('To')};tag=x\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    out = core.receive_datagram(busy, Flow(Transport.UDP, ("", 0), first.flow.remote), 0.2)
    assert ("198.51.100.2", 5080) in [t.flow.remote for t in out]


def test_health_checks_of_a_located_target_ping_its_first_address() -> None:
    checked = parse_config(
        table("server", {"fqdn": "sip.example.test"})
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], transport="udp", health_check=None)
        + peer("pbx", addresses=[], transport="udp", health_check=30.0)
        + dial_plan("main", "unsecured", ["pbx"])
    )
    core = SipCore(checked)
    assert core.handle_timers(0.0) == []  # not located yet: nothing to ping
    (lookup,) = core.take_lookups()
    assert lookup == LOOKUP
    core.located(lookup, FOUND, 0.1)
    (ping,) = core.handle_timers(1.0)  # tried again a second later
    assert ping.flow.remote == ("198.51.100.1", 5070)
    request = parse(ping)
    assert isinstance(request, Request) and request.method == "OPTIONS"
