"""The registrar and calls to softphones in the pure core: bindings tied to their flow
(RFC 5626), expiry rules, refusals with their reasons, and parallel forking."""

from __future__ import annotations

import pytest

from sipserver.config.loader import parse_config
from sipserver.config.schema import Config
from sipserver.pki.certinfo import CertInfo
from sipserver.proxy.connection_directory import NoConnections
from sipserver.proxy.core import SipCore
from sipserver.proxy.events import RegistrationChanged
from sipserver.sip.flow import Flow, Transmit, Transport
from sipserver.sip.message import Request, Response, parse_message
from tests.configs import dial_plan, peer, table

BASE = (
    table("server", {"fqdn": "sip.example.test", "sip_port": 5060, "tls_port": 5061})
    + table("registrar", {"min_expires": 60, "max_expires": 600, "default_expires": 300})
    + peer("gw1", kind="gateway", addresses=["192.0.2.10"], transport="udp", health_check=None)
    + peer("phone1", kind="softphone", addresses=["192.0.2.50"], numbers=["7001", "7002"])
    + peer("phone2", kind="softphone", addresses=["192.0.2.60"], numbers=["7003"])
)


def config(security: str = "unsecured", **more: str) -> Config:
    plan = dial_plan(
        "phones", security, ["phone1", "phone2"], numbers=["70xx"], from_=["gw1", "phone1"]
    )
    return parse_config(BASE + plan + "".join(more.values()))


GW = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.10", 5060))
TLS_A = Flow(Transport.TLS, ("0.0.0.0", 5061), ("192.0.2.50", 40001), connection_id=1)
TLS_B = Flow(Transport.TLS, ("0.0.0.0", 5061), ("192.0.2.50", 40002), connection_id=2)
UDP_PHONE = Flow(Transport.UDP, ("0.0.0.0", 5060), ("192.0.2.50", 5062))
INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-000000000001>"'


def register(
    number: str = "7001",
    *,
    contact: str = "<sip:7001@192.0.2.50:5062;transport=tls>",
    expires: str | None = "300",
    cseq: int = 1,
    call_id: str = "reg-1",
    extra: str = "",
    transport: str = "TLS",
) -> bytes:
    lines = [
        "REGISTER sip:sip.example.test SIP/2.0",
        f"Via: SIP/2.0/{transport} 192.0.2.50:5062;branch=z9hG4bKr{cseq}{call_id};rport",
        f"From: <sip:{number}@sip.example.test>;tag=r",
        f"To: <sip:{number}@sip.example.test>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    return ("\r\n".join(lines) + "\r\n" + extra + "Content-Length: 0\r\n\r\n").encode()


def invite(number: str = "7001", call_id: str = "call-1") -> bytes:
    return (
        f"INVITE sip:{number}@sip.example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcall1\r\n"
        f"From: <sip:a@gw1.example.test>;tag=ft\r\nTo: <sip:{number}@sip.example.test>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:a@192.0.2.10:5060>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def parse(t: Transmit) -> Request | Response:
    message = parse_message(t.data)
    assert isinstance(message, (Request, Response))
    return message


def over_tls(core: SipCore, data: bytes, flow: Flow = TLS_A, now: float = 0.0) -> list[Transmit]:
    return core.receive_stream_message(data, flow, core.config.peer("phone1"), now)


def only_response(out: list[Transmit]) -> Response:
    assert len(out) == 1, out
    response = parse(out[0])
    assert isinstance(response, Response)
    return response


def changes(core: SipCore) -> list[tuple[str, str | None]]:
    return [(e.change, e.reason) for e in core.take_events() if isinstance(e, RegistrationChanged)]


def answer(request: Request, status: int, to_tag: str = "callee") -> bytes:
    vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
    return (
        f"SIP/2.0 {status} X\r\n{vias}From: {request.headers.get('From')}\r\n"
        f"To: {request.headers.get('To')};tag={to_tag}\r\nCall-ID: {request.call_id}\r\n"
        f"CSeq: {request.cseq[0]} {request.cseq[1]}\r\nContact: <sip:7001@192.0.2.50:5062>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# --- REGISTER ------------------------------------------------------------------------------
def test_register_gets_200_listing_the_bindings_with_their_expiry() -> None:
    core = SipCore(config())
    response = only_response(over_tls(core, register(expires="3600")))
    assert response.status == 200
    # Longer than registrar.max_expires is cut to it.
    assert response.headers.get_all("Contact") == [
        "<sip:7001@192.0.2.50:5062;transport=tls>;expires=600"
    ]
    assert changes(core) == [("added", None)]
    refreshed = only_response(over_tls(core, register(expires="120", cseq=2), now=10.0))
    assert refreshed.headers.get_all("Contact")[0].endswith(";expires=120")
    assert changes(core) == [("refreshed", None)]


def test_expiry_comes_from_the_contact_then_the_header_then_the_default() -> None:
    core = SipCore(config())
    contact = "<sip:7001@192.0.2.50:5062>;expires=90"
    assert (
        only_response(over_tls(core, register(contact=contact)))
        .headers.get_all("Contact")[0]
        .endswith(";expires=90")
    )
    response = only_response(over_tls(core, register("7002", expires=None, call_id="r2")))
    assert response.headers.get_all("Contact")[0].endswith(";expires=300")


def test_too_short_an_expiry_gets_423_with_min_expires_and_changes_nothing() -> None:
    core = SipCore(config())
    response = only_response(over_tls(core, register(expires="30")))
    assert (response.status, response.headers.get("Min-Expires")) == (423, "60")
    assert "below registrar.min_expires (60 s)" in (response.headers.get("Warning") or "")
    assert core.bindings_by_number() == {}


def test_expires_0_and_contact_star_remove_bindings() -> None:
    core = SipCore(config())
    over_tls(core, register())
    over_tls(core, register(contact="<sip:7001@192.0.2.50:6000>", cseq=2))
    assert len(core.bindings_by_number()["7001"]) == 2
    core.take_events()
    gone = only_response(over_tls(core, register(expires="0", cseq=3)))
    assert gone.headers.get_all("Contact") == ["<sip:7001@192.0.2.50:6000>;expires=300"]
    assert changes(core) == [("removed", "unregistered (expires 0)")]
    star = only_response(over_tls(core, register(contact="*", expires="0", cseq=4)))
    assert (star.status, star.headers.get_all("Contact")) == (200, [])
    assert "7001" not in core.bindings_by_number()


def test_a_query_without_contact_lists_the_bindings_and_changes_nothing() -> None:
    core = SipCore(config())
    over_tls(core, register())
    core.take_events()
    response = only_response(over_tls(core, register(contact="", expires=None, cseq=2)))
    assert response.headers.get_all("Contact") == [
        "<sip:7001@192.0.2.50:5062;transport=tls>;expires=300"
    ]
    assert changes(core) == []


@pytest.mark.parametrize(
    ("data", "status", "why"),
    [
        (register("7003"), 403, "Number 7003 is not one of softphone phone1"),
        (register(contact="*", expires="300"), 400, "Contact: * must stand alone"),
        (register(expires="soon"), 400, "Malformed Expires header 'soon'"),
        (register(contact="<sip:7001@192.0.2.50>;reg-id=1"), 400, "reg-id without +sip.instance"),
        (register(contact="<tel:+7001>"), 400, "is not a sip: or sips: URI"),
        (
            register().replace(b"To: <sip:7001@", b"To: <sip:7001@other.example."),
            403,
            "Domain other.example.sip.example.test is not served here",
        ),
    ],
)
def test_refused_registrations_say_why(data: bytes, status: int, why: str) -> None:
    core = SipCore(config())
    response = only_response(over_tls(core, data))
    assert response.status == status
    assert why in (response.headers.get("Warning") or response.reason), response.headers.get(
        "Warning"
    )
    assert core.bindings_by_number() == {}


def test_a_gateway_may_not_register() -> None:
    core = SipCore(config())
    response = only_response(core.receive_datagram(register(transport="UDP"), GW, 0.0))
    assert response.status == 403
    assert "Only softphones register: peer gw1 (gw1.example.test) is kind gateway" in (
        response.headers.get("Warning") or ""
    )


def test_an_out_of_order_register_for_the_same_call_id_gets_500() -> None:
    core = SipCore(config())
    over_tls(core, register(cseq=5))
    response = only_response(over_tls(core, register(cseq=4)))
    assert response.status == 500


def test_past_max_bindings_the_oldest_goes_never_the_binding_just_registered() -> None:
    """Ten long bindings, then one short: the 200 lists the new one, the oldest went."""
    core = SipCore(config())
    for n in range(10):
        contact = f"<sip:7001@192.0.2.50:{6000 + n}>"
        over_tls(core, register(contact=contact, expires="600", cseq=n + 1), now=float(n))
    core.take_events()
    new = "<sip:7001@192.0.2.50:7000>"
    response = only_response(over_tls(core, register(contact=new, expires="120", cseq=20), now=20))
    listed = response.headers.get_all("Contact")
    assert f"{new};expires=120" in listed and len(listed) == 10
    assert not any(":6000>" in c for c in listed)  # the one registered first
    assert changes(core) == [
        ("added", None),
        ("removed", "more than registrar.max_bindings (10) for the number"),
    ]
    # A refresh counts as registering again: 6001 is now the newest, 6002 goes next.
    over_tls(core, register(contact="<sip:7001@192.0.2.50:6001>", expires="600", cseq=21), now=30)
    over_tls(core, register(contact="<sip:7001@192.0.2.50:7001>", expires="120", cseq=22), now=31)
    remaining = {b.contact for b in core.bindings_by_number()["7001"]}
    assert "sip:7001@192.0.2.50:6001" in remaining and "sip:7001@192.0.2.50:6002" not in remaining


def test_a_contact_repeated_in_one_register_is_one_binding_with_its_last_expiry() -> None:
    core = SipCore(config())
    contact = "<sip:7001@192.0.2.50:5062;transport=tls>"
    twice = f"{contact};expires=100, {contact};expires=200"
    response = only_response(over_tls(core, register(contact=twice)))
    assert response.status == 200
    assert len(core.bindings_by_number()["7001"]) == 1
    assert response.headers.get_all("Contact") == [f"{contact};expires=200"]
    assert changes(core) == [("added", None)]


def test_too_many_contacts_in_one_register_get_400_and_change_nothing() -> None:
    core = SipCore(config())
    many = ", ".join(f"<sip:7001@192.0.2.50:{6000 + n}>" for n in range(21))
    response = only_response(over_tls(core, register(contact=many)))
    assert response.status == 400
    assert "21 Contacts in one REGISTER, more than registrar.max_contacts (20)" in (
        response.headers.get("Warning") or ""
    )
    assert core.bindings_by_number() == {} and changes(core) == []
    eleven = ", ".join(f"<sip:7001@192.0.2.50:{6000 + n}>" for n in range(11))
    response = only_response(over_tls(core, register(contact=eleven)))
    assert response.status == 403
    assert "11 Contacts for 7001 in one REGISTER, more than registrar.max_bindings (10)" in (
        response.headers.get("Warning") or ""
    )
    assert core.bindings_by_number() == {}


# --- RFC 5626 flows --------------------------------------------------------------------------
def outbound_register(flow: Flow, cseq: int, core: SipCore, now: float = 0.0) -> Response:
    contact = f"<sip:7001@192.0.2.50;transport=tls;ob>;+sip.instance={INSTANCE};reg-id=1"
    data = register(contact=contact, cseq=cseq, extra="Supported: path, outbound\r\n")
    return only_response(over_tls(core, data, flow, now))


def test_outbound_registration_is_acknowledged_and_a_new_flow_replaces_the_old() -> None:
    core = SipCore(config())
    first = outbound_register(TLS_A, 1, core)
    assert first.headers.get("Require") == "outbound"
    assert first.headers.get("Flow-Timer") == "120"
    assert "reg-id=1" in first.headers.get_all("Contact")[0]
    assert "+sip.instance=" + INSTANCE in first.headers.get_all("Contact")[0]
    outbound_register(TLS_B, 2, core, now=5.0)
    (binding,) = core.bindings_by_number()["7001"]
    assert binding.flow == TLS_B
    assert [c for c, _ in changes(core)] == ["added", "replaced"]
    core.transport_failed(TLS_A, "closed by peer", 6.0)  # the old flow ends: nothing lost
    assert core.bindings_by_number()["7001"] == [binding]


def test_a_binding_ends_with_its_connection_and_calls_then_get_480_at_once() -> None:
    core = SipCore(config())
    over_tls(core, register())
    core.take_events()
    core.transport_failed(TLS_A, "closed by peer", 1.0)
    assert changes(core) == [("removed", "connection closed: closed by peer")]
    out = core.receive_datagram(invite(), GW, 2.0)
    final = parse(out[-1])
    assert isinstance(final, Response) and final.status == 480
    assert "7001 not registered" in (final.headers.get("Warning") or "")


def test_bindings_expire_when_not_refreshed() -> None:
    core = SipCore(config())
    over_tls(core, register(expires="60"))
    core.take_events()
    assert core.next_deadline() == 60.0
    core.handle_timers(60.0)
    assert changes(core) == [("expired", "not refreshed in time")]
    assert core.bindings_by_number() == {}


# --- calls to softphones ---------------------------------------------------------------------
def test_a_call_goes_over_the_registered_flow_to_the_contact() -> None:
    core = SipCore(config())
    over_tls(core, register())
    out = core.receive_datagram(invite(), GW, 1.0)
    sent = [t for t in out if t.flow == TLS_A]
    assert len(sent) == 1
    request = parse(sent[0])
    assert isinstance(request, Request)
    assert request.uri == "sip:7001@192.0.2.50:5062;transport=tls"
    assert ";peer=phone1" in request.headers.get_all("Record-Route")[0]
    response = parse(core.receive_stream_message(answer(request, 200), TLS_A, None, 2.0)[-1])
    assert isinstance(response, Response) and response.status == 200


def test_a_sip_secured_call_needs_a_tls_binding() -> None:
    core = SipCore(config("sip-secured"))
    core.receive_datagram(
        register(transport="UDP", contact="<sip:7001@192.0.2.50:5062>"), UDP_PHONE, 0.0
    )
    assert core.bindings_by_number()["7001"][0].flow == UDP_PHONE
    tls_gw = Flow(Transport.TLS, ("0.0.0.0", 5061), ("192.0.2.10", 40000), connection_id=9)
    out = core.receive_stream_message(invite(), tls_gw, core.config.peer("gw1"), 1.0)
    final = parse(out[-1])
    assert isinstance(final, Response) and final.status == 480
    assert (
        "registered over UDP, but dial plan phones is sip-secured and needs a TLS registration"
        in (final.headers.get("Warning") or "")
    )


def test_a_number_no_softphone_of_the_plan_owns_gets_404() -> None:
    core = SipCore(config())
    final = parse(core.receive_datagram(invite("7099"), GW, 0.0)[-1])
    assert isinstance(final, Response) and final.status == 404
    assert "No softphone of dial plan phones has number 7099" in (
        final.headers.get("Warning") or ""
    )


def ringing_two_flows() -> tuple[SipCore, Request, Request]:
    """Two flows registered for 7001 and a call for it: the INVITE on each flow."""
    core = SipCore(config())
    over_tls(core, register())
    over_tls(core, register(contact="<sip:7001@192.0.2.50:6000;transport=tls>", cseq=2), TLS_B)
    out = core.receive_datagram(invite(), GW, 1.0)
    legs = {t.flow: parse(t) for t in out if t.flow in (TLS_A, TLS_B)}
    a, b = legs.get(TLS_A), legs.get(TLS_B)
    assert isinstance(a, Request) and isinstance(b, Request), legs
    return core, a, b


def test_several_flows_ring_at_once_the_first_2xx_wins_and_the_rest_is_cancelled() -> None:
    core, a, b = ringing_two_flows()
    assert a.top_via.branch != b.top_via.branch  # type: ignore[union-attr]
    core.receive_stream_message(answer(b, 180, "tb"), TLS_B, None, 1.1)
    out = core.receive_stream_message(answer(a, 200, "ta"), TLS_A, None, 1.2)
    to_caller = [parse(t) for t in out if t.flow == GW]
    assert [getattr(m, "status", None) for m in to_caller] == [200]
    cancels = [parse(t) for t in out if t.flow == TLS_B]
    assert [getattr(m, "method", None) for m in cancels] == ["CANCEL"]


def test_when_every_flow_refuses_the_caller_gets_the_best_answer() -> None:
    core, a, b = ringing_two_flows()
    first = core.receive_stream_message(answer(a, 486, "ta"), TLS_A, None, 1.1)
    assert [t for t in first if t.flow == GW] == []  # the other branch still rings
    out = core.receive_stream_message(answer(b, 603, "tb"), TLS_B, None, 1.2)
    final = parse([t for t in out if t.flow == GW][-1])
    assert isinstance(final, Response) and final.status == 603


def test_a_caller_cancel_cancels_every_ringing_branch() -> None:
    core, a, b = ringing_two_flows()
    for flow, leg in ((TLS_A, a), (TLS_B, b)):
        core.receive_stream_message(answer(leg, 180, f"t{flow.connection_id}"), flow, None, 1.1)
    cancel = invite().replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL")
    out = core.receive_datagram(cancel, GW, 1.2)
    assert sorted(str(t.flow.connection_id) for t in out if t.flow in (TLS_A, TLS_B)) == ["1", "2"]


def test_calls_from_a_softphone_follow_the_dial_plans() -> None:
    core = SipCore(config())
    over_tls(core, register("7002", contact="<sip:7002@192.0.2.60:5062;transport=tls>"))
    call = invite("7002").replace(b"192.0.2.10:5060;branch", b"192.0.2.50:5062;branch")
    out = over_tls(core, call, TLS_B, 1.0)
    assert [t.flow for t in out if isinstance(parse(t), Request)] == [TLS_A]


def test_a_udp_binding_is_reached_at_the_registers_source_not_the_contact_host() -> None:
    core = SipCore(config())
    behind_nat = register(transport="UDP", contact="<sip:7001@10.0.0.7:5060>")
    assert only_response(core.receive_datagram(behind_nat, UDP_PHONE, 0.0)).status == 200
    out = core.receive_datagram(invite(), GW, 1.0)
    (sent,) = [t for t in out if isinstance(parse(t), Request)]
    assert sent.flow.remote == ("192.0.2.50", 5062)
    assert parse(sent).uri == "sip:7001@10.0.0.7:5060"  # type: ignore[union-attr]


# --- reloads -----------------------------------------------------------------------------------
def test_bindings_survive_a_reload_and_go_with_their_softphone() -> None:
    core = SipCore(config())
    over_tls(core, register())
    core.take_events()
    core.configure(config())
    assert len(core.bindings_by_number()["7001"]) == 1
    without_phone1 = parse_config(
        BASE.replace('name = "phone1"', 'name = "phone9"')
        + dial_plan("phones", "unsecured", ["phone2"], numbers=["70xx"])
    )
    core.configure(without_phone1)
    assert core.bindings_by_number() == {}
    assert changes(core) == [("removed", "peer no longer configured as a softphone")]


class OpenConnections:
    """The pool as the core sees it: which connections are open. (It wraps NoConnections
    rather than subclassing it: a class compiled by mypyc takes no Python subclass.)"""

    def __init__(self, *flows: Flow) -> None:
        self.open = {flow.connection_id: flow for flow in flows}
        self.none = NoConnections()

    def flow_of(self, connection_id: int) -> Flow | None:
        return self.open.get(connection_id)

    def flow_to(self, peer: str, transport: Transport) -> Flow | None:
        return self.none.flow_to(peer, transport)

    def certificate_of(self, flow: Flow) -> CertInfo | None:
        return self.none.certificate_of(flow)

    def connection_id_of(self, flow: Flow) -> int | None:
        return self.none.connection_id_of(flow)


def test_in_dialog_requests_return_over_the_flow_the_call_was_delivered_on() -> None:
    pool = OpenConnections(TLS_A, TLS_B)
    core = SipCore(config(), connections=pool)
    over_tls(core, register())
    out = core.receive_datagram(invite(), GW, 1.0)
    (delivered,) = [parse(t) for t in out if t.flow == TLS_A]
    assert isinstance(delivered, Request)
    record_route = delivered.headers.get_all("Record-Route")
    assert record_route[0].endswith(";peer=phone1;flow=1>")  # the flow token (RFC 5626 §5.3)
    core.receive_stream_message(answer(delivered, 200), TLS_A, None, 1.1)
    # A second device registers the number later over another connection: the newest
    # binding, but the dialog stays on its own flow.
    second = register(contact="<sip:7001@192.0.2.50:6000;transport=tls>", cseq=9)
    over_tls(core, second, TLS_B, now=2.0)
    routes = "".join(f"Route: {v}\r\n" for v in reversed(record_route))
    bye = (
        "BYE sip:7001@192.0.2.50:5062;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye1\r\n"
        f"{routes}From: <sip:a@gw1.example.test>;tag=ft\r\n"
        "To: <sip:7001@sip.example.test>;tag=callee\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    out = core.receive_datagram(bye, GW, 3.0)
    assert [t.flow for t in out if isinstance(parse(t), Request)] == [TLS_A]
    # Once that flow is gone, the phone is reached over a flow it registered.
    del pool.open[1]
    core.transport_failed(TLS_A, "closed by peer", 4.0)
    again = bye.replace(b"bye1", b"bye2").replace(b"2 BYE", b"3 BYE")
    out = core.receive_datagram(again, GW, 5.0)
    assert [t.flow for t in out if isinstance(parse(t), Request)] == [TLS_B]
