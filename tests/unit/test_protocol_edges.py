"""Edges of what we send and accept: the Server header names no version (and strangers get
none), a datagram without its final empty line is still a whole message (§18.3), and Via
or Contact with empty parameters or list elements is refused, not routed."""

from __future__ import annotations

import pytest

from sipserver.config.loader import parse_config
from sipserver.proxy.core import SipCore
from sipserver.sip.flow import Flow, Transport
from tests.unit.test_numbers import answer, options
from tests.unit.test_registrar import BASE, config


def test_the_server_header_names_no_version_and_a_stranger_gets_none() -> None:
    core = SipCore(config())
    ours = answer(core, options(branch="srv1"))
    assert ours is not None and ours.headers.get("Server") == "sipserver"
    stranger = Flow(Transport.UDP, ("0.0.0.0", 5060), ("198.51.100.7", 5060))
    refused = answer(core, options(branch="srv2"), stranger)
    assert refused is not None and refused.status == 403
    assert refused.headers.get("Server") is None
    quiet = SipCore(parse_config(BASE.replace("[server]\n", '[server]\nuser_agent = ""\n', 1)))
    silent = answer(quiet, options(branch="srv3"))
    assert silent is not None and silent.status == 200 and silent.headers.get("Server") is None


def test_a_datagram_without_its_final_empty_line_is_still_answered() -> None:
    """RFC 3261 §18.3: a datagram is one whole message; be liberal in what ends its head."""
    core = SipCore(config())
    for cut, branch in ((2, "cut2"), (4, "cut4")):
        answered = answer(core, options(branch=branch)[:-cut])
        assert answered is not None and answered.status == 200, cut


def invite(via: str, contact: str) -> bytes:
    return (
        "INVITE sip:5001@sip.example.test SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKempty\r\n"
        f"Via: {via}\r\nFrom: <sip:gw@gw1.example.test>;tag=a\r\n"
        "To: <sip:5001@sip.example.test>\r\nCall-ID: empty-params\r\nCSeq: 1 INVITE\r\n"
        f"Contact: {contact}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


GOOD_VIA = "SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKx, SIP/2.0/TCP h.example;rport"
GOOD_CONTACT = '"Joe;; ,, Smith" <sip:joe@example.org;transport=tcp>;expires=60'


@pytest.mark.parametrize(
    ("via", "contact", "bad"),
    [
        ("SIP/2.0/UDP 192.0.2.15;;,;,,", GOOD_CONTACT, "Via"),
        (GOOD_VIA, '"Joe" <sip:joe@example.org>;;;;', "Contact"),
        (GOOD_VIA, "<sip:joe@example.org>;expires=60,", "Contact"),
        ("SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKx;", GOOD_CONTACT, "Via"),
    ],
)
def test_empty_parameters_in_via_or_contact_get_400_before_routing(
    via: str, contact: str, bad: str
) -> None:
    core = SipCore(config())
    refused = answer(core, invite(via, contact))
    assert refused is not None and refused.status == 400
    assert refused.reason == f"Malformed {bad}: an empty parameter or list element"


def test_well_formed_via_and_contact_lists_are_routed() -> None:
    """A display name may hold `;;` and `,,` inside its quotes."""
    routed = answer(SipCore(config()), invite(GOOD_VIA, GOOD_CONTACT))
    assert routed is not None, "no answer"
    assert routed.status != 400, routed.reason
