"""The classes whose __init__ is written out by hand (the generated one stays interpreted
in the compiled core): each must still set every field, or a field added later would be
missing on every instance until something read it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sipserver.config.loader import parse_config
from sipserver.proxy.calls import ClientContext, ProxyCall
from sipserver.proxy.live_transactions import ServerContext
from sipserver.proxy.targets import Attempt
from sipserver.routing.router import Proxy
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Headers, Request, Response
from sipserver.sip.proxy_ops import Hop, NextHop
from sipserver.sip.timers import TimerValues
from sipserver.sip.transaction_machine import (
    ClientTransaction,
    ResponseReceived,
    SendMessage,
    ServerTransaction,
)
from sipserver.sip.transaction_tables import CLIENT_INVITE, SERVER_INVITE, State
from sipserver.sip.uri import NameAddr, SipUri, parse_uri
from sipserver.sip.via import Via

FLOW = Flow(Transport.TLS, ("127.0.0.1", 5061), ("127.0.0.1", 40000), connection_id=1)
CONFIG = parse_config(
    """
[server]
fqdn = "sip.example.test"
addresses = ["127.0.0.1"]
[[peer]]
name = "gw1"
fqdn = "gw1.example.test"
addresses = ["127.0.0.1"]
[[dial_plan]]
name = "plan"
security = "unsecured"
from = ["gw1"]
numbers = ["5xxx"]
targets = ["gw1"]
"""
)
PEER, PLAN = CONFIG.peers[0], CONFIG.dial_plans[0]
# One of each, made with the arguments __init__ requires (real types: a compiled __init__
# checks them).
INSTANCES: list[Any] = [
    Via("TLS", "127.0.0.1"),
    FLOW,
    Transmit(FLOW, b"x"),
    SendMessage(b"x"),
    ResponseReceived(Response(Headers([]))),
    Request(Headers([])),
    Response(Headers([])),
    ServerTransaction(
        reliable=True, timers=TimerValues(), table=SERVER_INVITE, state=State.PROCEEDING
    ),
    ClientTransaction(
        reliable=True,
        timers=TimerValues(),
        table=CLIENT_INVITE,
        state=State.CALLING,
        key=("z9hG4bK1", "INVITE"),
        request=None,
        request_data=b"",
    ),
    ClientContext(None, FLOW, "forward"),
    ServerContext(("k",), FLOW, FLOW, None, "INVITE", None, None),
    Hop("sip.example.test", 5061, "tls"),
    NextHop(parse_uri("sip:5000@gw1.example.test"), Transport.TLS, "gw1"),
    Attempt(PEER, Transport.TLS, "sip:5000@gw1.example.test", FLOW),
    Proxy(PLAN, (PEER,), "5000"),
    SipUri("sip", "gw1.example.test", "5000", None, 5061, {"transport": "tls"}, "subject=x"),
    NameAddr("sip:5000@gw1.example.test", "Gateway", {"tag": "1"}, True),
    ProxyCall(
        ServerTransaction(
            reliable=True, timers=TimerValues(), table=SERVER_INVITE, state=State.PROCEEDING
        ),
        Request(Headers([])),
        ServerContext(("k",), FLOW, FLOW, None, "INVITE", None, None),
        PLAN,
        [PEER],
        0.0,
    ),
]


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda i: type(i).__name__)
def test_the_written_out_init_sets_every_field(instance: Any) -> None:
    unset = [f.name for f in dataclasses.fields(instance) if not hasattr(instance, f.name)]
    assert unset == []


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda i: type(i).__name__)
def test_replace_still_works(instance: Any) -> None:
    """dataclasses.replace passes every field __init__ takes to it by name."""
    copy = dataclasses.replace(instance)
    for f in dataclasses.fields(instance):
        assert getattr(copy, f.name) == getattr(instance, f.name) or f.name == "id"


def test_value_classes_compare_and_hash_by_value() -> None:
    flow = FLOW
    same = Flow(Transport.TLS, ("127.0.0.1", 5061), ("127.0.0.1", 40000), connection_id=1)
    assert flow == same and hash(flow) == hash(same)
    assert {flow: 1}[same] == 1
    assert flow != dataclasses.replace(flow, connection_id=2)
    assert flow != ("tls", flow.local, flow.remote, 1, None) and flow != object()


@pytest.mark.parametrize(
    "change",
    [
        {"transport": Transport.TCP},
        {"local": ("127.0.0.1", 5062)},
        {"remote": ("127.0.0.2", 40000)},
        {"connection_id": None},
        {"server_name": "gw1.example.test"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_flows_differing_in_any_field_are_not_equal(change: dict[str, Any]) -> None:
    """Flow writes its __eq__ and __hash__ out: each must still look at every field."""
    other = dataclasses.replace(FLOW, **change)
    assert other != FLOW
    assert {FLOW: 1}.get(other) is None
    assert len({FLOW, other, dataclasses.replace(other)}) == 2
    assert Via("TLS", "h", 5061, {"branch": "z9hG4bK1"}).branch == "z9hG4bK1"
    assert Via("UDP", "h").params == {}
    assert Request(Headers([]), method="BYE").uri == ""
