"""Dial plans and security modes, driven by sipp INVITEs over UDP, TCP and mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.configs import dial_plan, peer
from tests.e2e.conftest import Pki, RunningServer, StartServer
from tests.e2e.peers import assert_sipp_ok, sipp_caller, stunnel_client
from tests.e2e.sipp_scenarios import invite_expecting

pytestmark = pytest.mark.e2e

PLANS = (
    peer("pbx1", addresses=["192.0.2.20"], port=5061)
    + peer("pbx2", addresses=[], transport="tcp")
    + dial_plan("hq", "secured", ["pbx1"], numbers=["+14255550100"], action="redirect")
    + dial_plan("branch", "sip-secured", ["pbx1"], numbers=["+1425*"], action="redirect")
    + dial_plan("lobby", "unsecured", ["pbx2"], action="redirect")
    + dial_plan(
        "trunk",
        "unsecured",
        ["pbx2"],
        numbers=["9*"],
        action="redirect",
        deny_numbers=["91900*", "9011*", "!901144*"],
    )
)


@pytest.fixture
def server(start_server: StartServer) -> RunningServer:
    return start_server(extra_config=PLANS)


def test_unsecured_plan_redirects_a_udp_call_to_its_target(
    server: RunningServer, tmp_path: Path
) -> None:
    scenario = invite_expecting(
        tmp_path / "302.xml",
        302,
        checks={"Contact": r"^ *<sip:5000@pbx2\.example\.test:5060;transport=tcp>$"},
    )
    assert_sipp_ok(sipp_caller(scenario, server.sip_port, "5000"))
    event = server.wait_for("call_redirected", dial_plan="lobby")
    assert event["security"] == "unsecured" and event["target"] == "pbx2" and event["status"] == 302


def test_sip_secured_plan_refuses_tcp_with_403_and_a_warning(
    server: RunningServer, tmp_path: Path
) -> None:
    scenario = invite_expecting(
        tmp_path / "403.xml",
        403,
        checks={
            "Warning": r'^ *399 sip\.example\.test "Dial plan branch is sip-secured and requires mutual TLS'
        },
    )
    assert_sipp_ok(sipp_caller(scenario, server.sip_port, "+14255550199", "t1"))
    event = server.wait_for("call_refused_insecure_transport")
    assert event["dial_plan"] == "branch" and event["transport"] == "tcp"


def test_unknown_number_gets_404(server: RunningServer, tmp_path: Path) -> None:
    scenario = invite_expecting(
        tmp_path / "404.xml",
        404,
        checks={"Warning": r"No dial plan for number \+19995550000 from peer gw1"},
    )
    assert_sipp_ok(sipp_caller(scenario, server.sip_port, "+19995550000"))


def test_secured_plan_over_mutual_tls(server: RunningServer, pki: Pki, tmp_path: Path) -> None:
    """Through stunnel with the gateway's certificate: a clear-RTP offer is refused with 488
    naming the media line; an SRTP offer is redirected to the target over TLS."""
    clear = invite_expecting(
        tmp_path / "488.xml",
        488,
        checks={
            "Warning": r"Dial plan hq is secured and requires SRTP: m=audio [0-9]+ RTP/AVP \(line 6\) is not SRTP"
        },
    )
    srtp = invite_expecting(
        tmp_path / "302tls.xml",
        302,
        proto="RTP/SAVP",
        crypto=True,
        checks={"Contact": r"^ *<sip:\+14255550100@pbx1\.example\.test:5061;transport=tls>$"},
    )
    with stunnel_client(pki, tmp_path, server.tls_port) as local:
        assert_sipp_ok(sipp_caller(clear, local, "+14255550100", "t1"))
        assert_sipp_ok(sipp_caller(srtp, local, "+14255550100", "t1"))
        assert_sipp_ok(
            sipp_caller(invite_expecting(tmp_path / "302b.xml", 302), local, "+14255550199", "t1")
        )  # sip-secured: RTP fine
    refused = server.wait_for("call_refused_insecure_media")
    assert refused["dial_plan"] == "hq" and refused["peer_fqdn"] == "gw1.example.test"
    assert refused["peer_cert_thumbprint_sha256"]
    server.wait_for("call_redirected", dial_plan="hq", transport="tls")


def test_a_denied_number_gets_403_naming_the_pattern_and_an_exception_passes(
    server: RunningServer, tmp_path: Path
) -> None:
    """Toll fraud: premium (1900) and international (011) numbers of a plan refused, except
    the one country allowed (011 44)."""
    scenario = invite_expecting(
        tmp_path / "403.xml",
        403,
        checks={
            "Warning": r"Number 919005550100 is denied by dial plan trunk \(deny_numbers 91900\*\)"
        },
    )
    assert_sipp_ok(sipp_caller(scenario, server.sip_port, "919005550100"))
    refused = server.wait_for("call_refused_denied_number")
    assert (refused["dial_plan"], refused["status"], refused["peer"]) == ("trunk", 403, "gw1")
    allowed = invite_expecting(tmp_path / "302.xml", 302)
    assert_sipp_ok(sipp_caller(allowed, server.sip_port, "9011441234567"))
    assert server.wait_for("call_redirected", dial_plan="trunk")["status"] == 302
