"""Edges of what we send and accept: the Server header names no version (and strangers get
none), and a datagram without its final empty line is still a whole message (§18.3)."""

from __future__ import annotations

from sipserver.config import parse_config
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
