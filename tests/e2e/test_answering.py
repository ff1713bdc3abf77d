"""The built-in answering target end to end: sipp calls a number whose dial plan says
action = "answer", over UDP, TCP and mutual TLS (stunnel in front of sipp), in each
security mode; CANCEL before the answer; and the answering target hanging up by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.configs import answer_plan
from tests.e2e.conftest import Pki, RunningServer, StartServer
from tests.e2e.peers import assert_sipp_ok, sipp_caller, stunnel_client
from tests.e2e.sipp_scenarios import call_uac, call_uac_answered_then_hung_up, invite_expecting

pytestmark = pytest.mark.e2e

SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1", "tls": "t1"}


def call(server: RunningServer, pki: Pki, tmp_path: Path, scenario: Path, transport: str) -> None:
    """One sipp call to number 5000, straight in or through stunnel for mutual TLS."""
    if transport != "tls":
        assert_sipp_ok(sipp_caller(scenario, server.sip_port, "5000", SIPP_TRANSPORT[transport]))
        return
    with stunnel_client(pki, tmp_path, server.tls_port) as local:
        assert_sipp_ok(sipp_caller(scenario, local, "5000", "t1"))


@pytest.mark.parametrize(
    ("security", "transport"),
    [
        ("unsecured", "udp"),
        ("unsecured", "tcp"),
        ("unsecured", "tls"),
        ("sip-secured", "tls"),
        ("secured", "tls"),
    ],
)
def test_a_call_is_answered_kept_and_hung_up_by_the_caller(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str, transport: str
) -> None:
    server = start_server(extra_config=answer_plan(security, answer_after=0.2))
    srtp = security == "secured"
    proto = "RTP/SAVP" if srtp else "RTP/AVP"
    scenario = call_uac(tmp_path / "uac.xml", proto=proto, crypto=srtp)
    call(server, pki, tmp_path, scenario, transport)
    answered = server.wait_for("call_answered", dial_plan="echo")
    assert answered["security"] == security and answered["transport"] == transport
    assert answered["media"] == [f"audio {proto}" + (" with SDES keys" if srtp else "")]
    if transport == "tls":  # both certificates, as on every call over TLS
        assert answered["peer_cert_subject"] == "CN=gw1.example.test"
        assert (
            answered["our_thumbprint_sha1"]
            == server.wait_for("server_certificate_selected")["thumbprint_sha1"]
        )
    ended = server.wait_for("answered_call_ended", dial_plan="echo")
    assert ended["ended_by"] == "caller_bye"


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_cancel_before_the_answer_gets_487(
    start_server: StartServer, pki: Pki, tmp_path: Path, transport: str
) -> None:
    server = start_server(extra_config=answer_plan("unsecured", answer_after=30))
    call(server, pki, tmp_path, call_uac(tmp_path / "uac.xml", cancel=True), transport)
    assert server.wait_for("answered_call_ended", dial_plan="echo")["ended_by"] == "cancelled"
    assert server.events("call_answered") == []


@pytest.mark.parametrize(("security", "transport"), [("unsecured", "udp"), ("secured", "tls")])
def test_the_answering_target_hangs_up_after_answer_hangup_after(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str, transport: str
) -> None:
    server = start_server(
        extra_config=answer_plan(security, answer_after=0, answer_hangup_after=1.0)
    )
    srtp = security == "secured"
    scenario = call_uac_answered_then_hung_up(
        tmp_path / "hung_up.xml",
        proto="RTP/SAVP" if srtp else "RTP/AVP",
        crypto=srtp,
        answer_body=(
            "m=audio 9 RTP/SAVP 0.*a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
            if srtp
            else "m=audio 9 RTP/AVP 0"
        ),
    )
    call(server, pki, tmp_path, scenario, transport)
    ended = server.wait_for("answered_call_ended", dial_plan="echo")
    assert ended["ended_by"] == "hangup_timer" and ended["duration_s"] >= 1.0


def test_a_secured_number_refuses_plain_rtp_and_plain_transport(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    server = start_server(extra_config=answer_plan("secured"))
    call(server, pki, tmp_path, invite_expecting(tmp_path / "plain.xml", 488), "tls")
    assert "requires SRTP" in server.wait_for("call_refused_insecure_media")["reason"]
    call(server, pki, tmp_path, invite_expecting(tmp_path / "udp.xml", 403), "udp")
    server.wait_for("call_refused_insecure_transport")
