"""Dial-plan matching and security-mode decisions (pure)."""

from __future__ import annotations

import pytest

from sipserver.config.loader import ConfigError, parse_config
from sipserver.proxy.core import SipCore
from sipserver.routing.dialplan import find_dial_plan, normalise_number, number_matches
from sipserver.routing.router import Redirect, Reject, route
from sipserver.sip.flow import Flow, Transport
from sipserver.sip.message import Request, Response, parse_message
from tests.configs import dial_plan, peer, table

CONFIG = (
    table("server", {"fqdn": "sip.example.test"})
    + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
    + peer("gw2", kind="gateway", addresses=["192.0.2.11"], health_check=None)
    + peer("pbx1", addresses=["192.0.2.20"], port=5071, health_check=None)
    + peer("pbx2", addresses=[], transport="tcp", health_check=None)
    + dial_plan("hq", "secured", ["pbx1"], numbers=["+14255550100", "4xxx"], action="redirect")
    + dial_plan(
        "branch",
        "sip-secured",
        ["pbx1"],
        numbers=["+1425*"],
        from_=["gw1", "gw2"],
        action="redirect",
    )
    + dial_plan("lobby", "unsecured", ["pbx2", "pbx1"], from_=["gw2"], action="redirect")
)
CONFIG_ = parse_config(CONFIG)
SRTP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
)
RTP = SRTP.replace(b"RTP/SAVP", b"RTP/AVP").split(b"a=crypto")[0]


@pytest.mark.parametrize(
    ("pattern", "number", "expected"),
    [
        ("+14255550100", "+14255550100", True),
        ("+14255550100", "+142555501001", False),
        ("4xxx", "4123", True),
        ("4xxx", "412", False),
        ("4xxx", "41a3", False),
        ("+1425*", "+1425", True),
        ("+1425*", "+14259999999", True),
        ("+1425*", "+1426", False),
        ("4XXX", "4000", True),
    ],
)
def test_number_patterns(pattern: str, number: str, expected: bool) -> None:
    assert number_matches(pattern, number) is expected


def test_visual_separators_are_ignored() -> None:
    assert normalise_number("+1-425-(555)-0100") == "+14255550100"


def test_first_plan_listing_the_peer_wins() -> None:
    plans = CONFIG_.dial_plans
    assert find_dial_plan(plans, "gw1", "+14255550100").name == "hq"  # type: ignore[union-attr]
    assert find_dial_plan(plans, "gw1", "+14255550199").name == "branch"  # type: ignore[union-attr]
    assert find_dial_plan(plans, "gw2", "+14255550100").name == "branch"  # type: ignore[union-attr]
    assert find_dial_plan(plans, "gw2", "4123") is None  # hq's hunt group is gw1 only


def invite(number: str, body: bytes = b"", content_type: str = "application/sdp") -> Request:
    headers = [
        f"INVITE sip:{number}@sip.example.test;user=phone SIP/2.0",
        "Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKx1",
        "From: <sip:a@gw1.example.test>;tag=1",
        f"To: <sip:{number}@sip.example.test>",
        "Call-ID: r1",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
    ]
    if body:
        headers.append(f"Content-Type: {content_type}")
    raw = ("\r\n".join(headers) + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    message = parse_message(raw)
    assert isinstance(message, Request)
    return message


def test_secured_plan_redirects_an_srtp_call_over_tls_to_the_target_by_fqdn() -> None:
    decision = route(CONFIG_, invite("+14255550100", SRTP), CONFIG_.peer("gw1"), "tls")
    assert isinstance(decision, Redirect)
    assert decision.contact == "<sip:+14255550100@pbx1.example.test:5071;transport=tls>"


def test_secured_modes_refuse_plain_transports() -> None:
    for number in ("+14255550100", "+14255550199"):
        decision = route(CONFIG_, invite(number, SRTP), CONFIG_.peer("gw1"), "tcp")
        assert isinstance(decision, Reject) and decision.status == 403
        assert "requires mutual TLS" in decision.warning and "arrived over TCP" in decision.warning


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (RTP, "application/sdp", "m=audio 4000 RTP/AVP (line 6) is not SRTP"),
        (SRTP.split(b"a=crypto")[0], "application/sdp", "has no a=crypto"),
        (b"", "application/sdp", "carries no SDP offer"),
        (SRTP, "text/plain", "not an SDP offer"),
        (SRTP.replace(b"m=audio 4000", b"m=audio 0"), "application/sdp", "no active media stream"),
    ],
)
def test_secured_mode_needs_srtp_offers(body: bytes, content_type: str, fragment: str) -> None:
    decision = route(
        CONFIG_, invite("+14255550100", body, content_type), CONFIG_.peer("gw1"), "tls"
    )
    assert isinstance(decision, Reject) and decision.status == 488
    assert fragment in decision.warning and decision.warning.startswith("Dial plan hq is secured")


def test_sip_secured_mode_lets_clear_rtp_through() -> None:
    assert isinstance(
        route(CONFIG_, invite("+14255550199", RTP), CONFIG_.peer("gw1"), "tls"), Redirect
    )


def test_unsecured_mode_takes_any_transport_and_uses_the_targets_transport() -> None:
    decision = route(CONFIG_, invite("5000", RTP), CONFIG_.peer("gw2"), "udp")
    assert isinstance(decision, Redirect)
    assert decision.contact == "<sip:5000@pbx2.example.test:5060;transport=tcp>"


def test_unhealthy_targets_are_skipped_and_none_left_is_503_with_retry_after() -> None:
    decision = route(
        CONFIG_, invite("5000", RTP), CONFIG_.peer("gw2"), "udp", is_up=lambda p: p.name != "pbx2"
    )
    assert isinstance(decision, Redirect) and decision.target.name == "pbx1"
    none = route(CONFIG_, invite("5000", RTP), CONFIG_.peer("gw2"), "udp", is_up=lambda p: False)
    assert (
        isinstance(none, Reject) and none.status == 503 and none.headers == (("Retry-After", "30"),)
    )


def test_unknown_number_is_404_naming_number_and_peer() -> None:
    decision = route(CONFIG_, invite("+19999"), CONFIG_.peer("gw2"), "tls")
    assert isinstance(decision, Reject) and decision.status == 404
    assert decision.warning == "No dial plan for number +19999 from peer gw2 (gw2.example.test)"


def test_core_answers_302_with_contact_and_logs_it() -> None:
    core = SipCore(CONFIG_)
    flow = Flow(Transport.TLS, ("127.0.0.1", 5061), ("192.0.2.10", 40000), connection_id=1)
    out = core.receive_stream_message(
        invite("+14255550100", SRTP).to_bytes(), flow, CONFIG_.peer("gw1"), 0.0
    )
    response = parse_message(out[-1].data)
    assert isinstance(response, Response) and response.status == 302
    assert (
        response.headers.get("Contact") == "<sip:+14255550100@pbx1.example.test:5071;transport=tls>"
    )


def test_core_refuses_a_sip_secured_call_over_udp_with_403_and_warning() -> None:
    core = SipCore(CONFIG_)
    flow = Flow(Transport.UDP, ("127.0.0.1", 5060), ("192.0.2.10", 5060))
    data = invite("+14255550199", RTP).to_bytes().replace(b"SIP/2.0/TLS", b"SIP/2.0/UDP")
    response = parse_message(core.receive_datagram(data, flow, 0.0)[0].data)
    assert isinstance(response, Response) and response.status == 403
    assert "requires mutual TLS" in (response.headers.get("Warning") or "")


@pytest.mark.parametrize(
    ("original", "replacement", "key", "fragment"),
    [
        (
            'from = ["gw1", "gw2"]',
            'from = ["gw1", "gw9"]',
            "dial_plan[1].from",
            "unknown peer 'gw9'",
        ),
        (
            'numbers = ["5xxx"]',
            'numbers = ["5xxx", "12ab"]',
            "dial_plan[2].numbers",
            "not a number pattern",
        ),
        (
            'security = "sip-secured"',
            'security = "tls"',
            "dial_plan[1].security",
            "unsecured, sip-secured, secured",
        ),
        (
            'security = "unsecured"',
            'security = "sip-secured"',
            "dial_plan[2].targets",
            "needs mutual TLS",
        ),
        (
            'action = "redirect"\ntargets = ["pbx1"]\n[[dial_plan]]\nname = "lobby"',
            'action = "redirect"\ntargets = ["pbx1"]\n[[dial_plan]]\nname = "hq"',
            "dial_plan[2].name",
            "already used",
        ),
    ],
)
def test_dial_plan_errors_name_the_key(
    original: str, replacement: str, key: str, fragment: str
) -> None:
    assert original in CONFIG
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.replace(original, replacement))
    assert info.value.key == key and fragment in info.value.message and info.value.line is not None


def test_a_secured_call_keeps_srtp_in_dialog_re_invite_without_it_gets_488() -> None:
    config = parse_config(
        table("server", {"fqdn": "sip.example.test"})
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
        + peer("pbx1", addresses=["192.0.2.20"], port=5071, health_check=0)
        + dial_plan("hq", "secured", ["pbx1"], numbers=["+1425*"])
    )
    core = SipCore(config)
    caller = Flow(Transport.TLS, ("127.0.0.1", 5061), ("192.0.2.10", 40000), connection_id=1)
    out = core.receive_stream_message(
        invite("+14255550100", SRTP).to_bytes(), caller, config.peer("gw1"), 0.0
    )
    forwarded = next(parse_message(t.data) for t in out if t.flow.remote == ("192.0.2.20", 5071))
    assert isinstance(forwarded, Request)
    routes = forwarded.headers.get_all("Record-Route")
    assert all(";sec=secured" in r for r in routes)

    # The caller's re-INVITE inside the dialog, along the recorded route.
    def reinvite(body: bytes, branch: str) -> bytes:
        lines = [
            "INVITE sip:callee@192.0.2.20:5071;transport=tls SIP/2.0",
            f"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK{branch}",
            "From: <sip:a@gw1.example.test>;tag=1",
            "To: <sip:+14255550100@sip.example.test>;tag=callee",
            "Call-ID: r1",
            "CSeq: 2 INVITE",
            "Max-Forwards: 70",
            *(f"Route: {r}" for r in reversed(routes)),
            "Content-Type: application/sdp",
        ]
        return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    plain = core.receive_stream_message(reinvite(RTP, "re1"), caller, config.peer("gw1"), 1.0)
    refused = parse_message(plain[-1].data)
    assert isinstance(refused, Response) and refused.status == 488
    assert "requires SRTP in-dialog" in (refused.headers.get("Warning") or "")
    assert all(t.flow.remote != ("192.0.2.20", 5071) for t in plain)
    srtp = core.receive_stream_message(reinvite(SRTP, "re2"), caller, config.peer("gw1"), 2.0)
    assert any(t.flow.remote == ("192.0.2.20", 5071) for t in srtp)


DENYING = parse_config(
    table("server", {"fqdn": "sip.example.test"})
    + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
    + peer("pbx1", addresses=["192.0.2.20"], health_check=None)
    + dial_plan(
        "trunk",
        "unsecured",
        ["pbx1"],
        numbers=["*"],
        deny_numbers=["1900*", "011*", "+*", "!+44*", "!+1425*"],
    )
)


@pytest.mark.parametrize(
    ("number", "denied_by"),
    [
        ("19005550100", "1900*"),
        ("011441234567", "011*"),
        ("+33123456789", "+*"),  # international, and not one of the allowed countries
        ("+441234567890", None),  # an exception: "!+44*"
        ("+14255550100", None),
        ("5550100", None),
    ],
)
def test_denied_numbers_get_403_naming_the_pattern(number: str, denied_by: str | None) -> None:
    decision = route(DENYING, invite(number), DENYING.peer("gw1"), "udp")
    if denied_by is None:
        assert not isinstance(decision, Reject), decision
        return
    assert isinstance(decision, Reject)
    assert (decision.status, decision.log_event, decision.plan) == (
        403,
        "call_refused_denied_number",
        DENYING.dial_plans[0],
    )
    assert (
        decision.warning
        == f"Number {number} is denied by dial plan trunk (deny_numbers {denied_by})"
    )


@pytest.mark.parametrize(
    ("deny", "problem"),
    [
        (["19OO*"], "is not a number pattern"),
        (["!+44*"], "lists only exceptions"),
    ],
)
def test_a_bad_deny_pattern_is_a_config_error_naming_the_key(deny: list[str], problem: str) -> None:
    text = (
        table("server", {"fqdn": "sip.example.test"})
        + peer("pbx1", addresses=["192.0.2.20"], health_check=None)
        + peer("gw1", kind="gateway", addresses=["192.0.2.10"], health_check=None)
        + dial_plan("trunk", "unsecured", ["pbx1"], numbers=["*"], deny_numbers=deny)
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert "dial_plan[0].deny_numbers" in str(raised.value) and problem in str(raised.value)
