"""Bindings shared between processes, in the pure core: what the registrar publishes, a call
for a softphone waiting on the store's answer, one branch per other process (the sibling
hop) with the caller on its Route, and the handed-over call routed as that caller, ringing
its own flows only. A peer that is not one of our processes cannot hand a call over."""

from __future__ import annotations

from sipserver.config.loader import parse_config
from sipserver.config.schema import SIBLING_NAME
from sipserver.pki.certinfo import describe
from sipserver.proxy.core import SipCore
from sipserver.proxy.shared_bindings import BindingsFound, RemoteBinding, SharedBinding
from sipserver.proxy.sharing import BindingSharing
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Request, Response, parse_message
from tests.certs import make_ca, make_leaf
from tests.unit.test_registrar import GW, TLS_A, config, invite, register

HOP_B = ("127.0.0.1", 47001)
SIBLING_IN = Flow(Transport.TLS, ("127.0.0.1", 47000), ("127.0.0.1", 51000), connection_id=9)
SERVER_CERT = describe(make_leaf(make_ca("sibling test CA"), dns=["sip.example.test"]).cert)


def sharing_core(owner: str = "a") -> tuple[SipCore, BindingSharing]:
    core = SipCore(config("sip-secured"))
    core.set_ports(5060, 47000)
    return core, core.share_bindings(owner, "127.0.0.1")


def remote(
    number: str = "7001", owner: str = "b", transport: Transport = Transport.TLS
) -> RemoteBinding:
    shared = SharedBinding(
        number, "phone1", f"sip:{number}@192.0.2.50:5062", transport, "k", 3, 300
    )
    return RemoteBinding(shared, owner, HOP_B)


def parse(transmit: Transmit) -> Request | Response:
    message = parse_message(transmit.data)
    assert isinstance(message, (Request, Response))
    return message


def test_the_registrar_hands_its_changes_to_publish_and_withdraw() -> None:
    core, api = sharing_core()
    core.receive_stream_message(register(), TLS_A, core.peer_named("phone1"), 0.0)
    (added,) = api.take_changes()
    assert not added.withdraw and added.binding.number == "7001"
    assert (added.binding.connection_id, added.binding.expires_in) == (1, 300)
    assert api.take_changes() == []
    assert [b.number for b in api.ours(100.0)] == ["7001"]
    assert api.ours(100.0)[0].expires_in == 200
    core.transport_failed(TLS_A, "closed", 1.0)
    (gone,) = api.take_changes()
    assert gone.withdraw and gone.binding.key == added.binding.key


def test_a_call_for_a_softphone_waits_for_the_store_then_goes_to_the_process_holding_it() -> None:
    core, api = sharing_core()
    gw_tls = Flow(Transport.TLS, ("127.0.0.1", 5061), ("192.0.2.10", 40000), connection_id=5)
    out = core.receive_stream_message(invite(), gw_tls, core.peer_named("gw1"), 0.0)
    assert [parse(t).status for t in out] == [100]  # type: ignore[union-attr]
    assert list(api.take_queries()) == ["7001"]
    sent = api.found("7001", BindingsFound((remote(), remote(owner="a"))), 0.01)
    (handed,) = sent  # one branch, to the other process (our own binding is not rung twice)
    assert handed.flow.remote == HOP_B and handed.flow.server_name == "sip.example.test"
    request = parse(handed)
    assert isinstance(request, Request)
    assert request.uri == "sip:7001@sip.example.test"  # routed again there, by number
    route = request.headers.get_all("Route")
    assert route == ["<sip:127.0.0.1:47001;transport=tls;lr;peer=gw1>"]
    record_route = request.headers.get_all("Record-Route")
    assert record_route[0].startswith(
        "<sip:127.0.0.1:47000;transport=tls;lr;peer=sipserver-sibling"
    )


def test_without_an_answer_from_the_store_only_our_own_flows_ring() -> None:
    core, api = sharing_core()
    gw_tls = Flow(Transport.TLS, ("127.0.0.1", 5061), ("192.0.2.10", 40000), connection_id=5)
    core.receive_stream_message(invite(), gw_tls, core.peer_named("gw1"), 0.0)
    assert list(api.take_queries()) == ["7001"]
    (refused,) = api.found("7001", BindingsFound((), "the binding store failed: timeout"), 0.3)
    response = parse(refused)
    assert isinstance(response, Response) and response.status == 480
    warning = response.headers.get("Warning") or ""
    assert "not registered" in warning and "binding store failed" in warning


def handover(caller: str = "gw1", number: str = "7001", call_id: str = "handed-1") -> bytes:
    return (
        f"INVITE sip:{number}@sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS sip.example.test:47001;branch=z9hG4bK{call_id};rport\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcall1\r\n"
        f"Route: <sip:127.0.0.1:47000;transport=tls;lr;peer={caller}>\r\n"
        "Record-Route: <sip:127.0.0.1:47001;transport=tls;lr;peer=sipserver-sibling>\r\n"
        f"From: <sip:a@gw1.example.test>;tag=ft\r\nTo: <sip:{number}@sip.example.test>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@192.0.2.10:5060>\r\n"
        "X-Peer-Identity: gw1.example.test;transport=udp;source=192.0.2.10\r\n"
        "Max-Forwards: 69\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_handed_over_call_rings_our_own_flows_as_if_its_caller_had_called() -> None:
    core, api = sharing_core()
    core.receive_stream_message(register(), TLS_A, core.peer_named("phone1"), 0.0)
    sibling = core.peer_named(SIBLING_NAME)
    out = core.receive_stream_message(handover(), SIBLING_IN, sibling, 1.0, SERVER_CERT)
    assert list(api.take_queries()) == []  # never handed on again
    forwarded = [parse(t) for t in out if t.flow == TLS_A]
    (request,) = forwarded
    assert isinstance(request, Request)
    assert request.uri == "sip:7001@192.0.2.50:5062;transport=tls"
    assert request.headers.get_all("Route") == []
    # The caller's identity, as the process it entered verified it, passes unchanged.
    assert (
        request.headers.get("X-Peer-Identity") == "gw1.example.test;transport=udp;source=192.0.2.10"
    )
    # Record-Routed towards the sibling hop, so ACK and BYE come back the same way.
    ours = request.headers.get_all("Record-Route")[:2]
    assert "peer=phone1" in ours[0] and "flow=1" in ours[0]
    assert ours[1].startswith("<sip:127.0.0.1:47000;transport=tls;lr;peer=sipserver-sibling")


def test_only_our_own_processes_can_hand_a_call_over() -> None:
    core, api = sharing_core()
    gw_tls = Flow(Transport.TLS, ("127.0.0.1", 5061), ("192.0.2.10", 40000), connection_id=5)
    core.receive_stream_message(handover(), gw_tls, core.peer_named("gw1"), 0.0)
    assert list(api.take_queries()) == ["7001"]  # routed as gw1's own call: asks the store
    sibling = core.peer_named(SIBLING_NAME)
    refused = core.receive_stream_message(
        handover(caller=SIBLING_NAME, call_id="other"), SIBLING_IN, sibling, 1.0, SERVER_CERT
    )
    response = parse(refused[-1])
    assert isinstance(response, Response) and response.status == 403


def test_without_sharing_there_is_no_sibling() -> None:
    core = SipCore(config("unsecured"))
    assert core.peer_named(SIBLING_NAME) is None
    out = core.receive_datagram(invite(), GW, 0.0)  # no store to ask: 480 at once
    assert parse(out[-1]).status == 480  # type: ignore[union-attr]
    assert parse_config('[server]\nfqdn = "sip.example.test"\n').cluster.store is None
