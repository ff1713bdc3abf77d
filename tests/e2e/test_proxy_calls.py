"""Full calls through the proxy: sipp caller -> sipserver -> sipp callee, over UDP and
over mutual TLS (stunnel in front of both sipps), with CANCEL, failover and 503."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.configs import dial_plan, peer
from tests.e2e.conftest import Pki, StartServer, free_port
from tests.e2e.peers import (
    assert_callee_ok,
    assert_sipp_ok,
    sipp_callee,
    sipp_caller,
    stunnel_client,
    stunnel_server,
)
from tests.e2e.sipp_scenarios import call_uac, call_uas, invite_expecting

pytestmark = pytest.mark.e2e


def plan(security: str, targets: list[tuple[str, int, str]], action: str = "proxy") -> str:
    peers = "".join(peer(name, port=port, transport=transport) for name, port, transport in targets)
    names = [name for name, _, _ in targets]
    return peers + dial_plan("main", security, names, numbers=["5xxx", "+1425*"], action=action)


def test_unsecured_call_over_udp_completes_with_bye_through_record_route(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port = free_port()
    server = start_server(extra_config=plan("unsecured", [("pbx1", uas_port, "udp")]))
    uas = call_uas(
        tmp_path / "uas.xml",
        checks_on_invite={
            "X-Peer-Identity": r"^ *gw1\.example\.test;transport=udp;source=127\.0\.0\.1$",
            "Record-Route": r"^ *<sip:sip\.example\.test:[0-9]+;transport=udp;lr;peer=pbx1>$",
        },
    )
    uac = call_uac(
        tmp_path / "uac.xml",
        extra="      X-Peer-Identity: forged.example.test;cert-sha256=00\n",
        checks_on_200={"Record-Route": r"transport=udp;lr;peer=pbx1"},
    )
    with sipp_callee(uas, uas_port) as process:
        assert_sipp_ok(sipp_caller(uac, server.sip_port, "5000"))
        assert_callee_ok(process)
    routed = server.wait_for("call_routed", dial_plan="main")
    assert routed["status"] == 200 and routed["target"] == "pbx1" and routed["attempts"] == 1
    assert routed["setup_ms"] >= 0


def test_cancel_during_ringing(start_server: StartServer, tmp_path: Path) -> None:
    uas_port = free_port()
    server = start_server(extra_config=plan("unsecured", [("pbx1", uas_port, "udp")]))
    with sipp_callee(call_uas(tmp_path / "uas.xml", cancel=True), uas_port) as process:
        assert_sipp_ok(
            sipp_caller(call_uac(tmp_path / "uac.xml", cancel=True), server.sip_port, "5001")
        )
        assert_callee_ok(process)
    assert server.wait_for("call_ended", dial_plan="main")["status"] == 487


def test_first_target_refusing_connections_fails_over_to_the_second(
    start_server: StartServer, tmp_path: Path
) -> None:
    dead, uas_port = free_port(), free_port()
    server = start_server(
        extra_config=plan("unsecured", [("pbx1", dead, "tcp"), ("pbx2", uas_port, "udp")])
    )
    with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port) as process:
        assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5002"))
        assert_callee_ok(process)
    failed = server.wait_for("outbound_connection_failed")
    assert failed["reason"] == "connection refused"
    routed = server.wait_for("call_routed")
    assert routed["target"] == "pbx2" and routed["failed_attempts"] == ["pbx1: connection refused"]


def test_all_targets_down_gives_503_with_retry_after(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        extra_config=plan("unsecured", [("pbx1", free_port(), "tcp"), ("pbx2", free_port(), "tcp")])
    )
    scenario = invite_expecting(
        tmp_path / "503.xml",
        503,
        checks={
            "Retry-After": "^ *30$",
            "Warning": "All targets of main failed: pbx1: connection refused; pbx2: connection refused",
        },
    )
    assert_sipp_ok(sipp_caller(scenario, server.sip_port, "5003"))
    assert server.wait_for("call_ended")["status"] == 503


@pytest.mark.parametrize("security", ["sip-secured", "secured"])
def test_secured_modes_run_mutual_tls_on_both_legs(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str
) -> None:
    uas_port = free_port()
    srtp = security == "secured"
    with stunnel_server(pki, tmp_path, uas_port, "pbx1") as tls_port_of_pbx:
        server = start_server(extra_config=plan(security, [("pbx1", tls_port_of_pbx, "tls")]))
        uas = call_uas(
            tmp_path / "uas.xml",
            answer_proto="RTP/SAVP" if srtp else "RTP/AVP",
            answer_crypto=srtp,
            checks_on_invite={
                "X-Peer-Identity": r"^ *gw1\.example\.test;transport=tls;cert-sha256=[0-9A-F]{64}$",
                "Via": "SIP/2.0/TLS sip.example.test",
            },
        )
        uac = call_uac(
            tmp_path / "uac.xml",
            proto="RTP/SAVP" if srtp else "RTP/AVP",
            crypto=srtp,
            checks_on_200={"Record-Route": "transport=tls;lr;peer=pbx1"},
        )
        with (
            sipp_callee(uas, uas_port, "t1") as process,
            stunnel_client(pki, tmp_path, server.tls_port) as local,
        ):
            assert_sipp_ok(sipp_caller(uac, local, "+14255550100", "t1"))
            assert_callee_ok(process)
    target = server.wait_for("tls_target_accepted", target="pbx1")
    assert target["target_cert_issuer"] == "CN=sipserver test CA"
    routed = server.wait_for("call_routed", dial_plan="main")
    assert routed["security"] == security and routed["target_transport"] == "tls"
    assert routed["peer_cert_serial"] == serial_hex(pki.gw1.cert.serial_number)
    assert routed["peer_cert_issuer"] == routed["target_cert_issuer"] == "CN=sipserver test CA"
    assert routed["target_cert_subject"] == "CN=pbx1.example.test"
    assert (
        routed["our_thumbprint_sha1"]
        == server.wait_for("server_certificate_selected")["thumbprint_sha1"]
    )
    assert routed["decision"] == "proxy" and routed["status"] == 200
    assert server.events("security_violation_media_answer") == []


def test_health_checks_take_a_dead_target_out_of_rotation(
    start_server: StartServer, tmp_path: Path
) -> None:
    dead, uas_port = free_port(), free_port()
    config = plan("unsecured", [("pbx1", dead, "tcp"), ("pbx2", uas_port, "udp")]).replace(
        f'port = {dead}\ntransport = "tcp"\nhealth_check = 0',
        f'port = {dead}\ntransport = "tcp"\nhealth_check = 0.2',
    )
    server = start_server(extra_config=config + "\n[routing]\ndown_after_failures = 2\n")
    down = server.wait_for("target_health_changed", target="pbx1")
    assert down["state"] == "down" and down["reason"] == "connection refused"
    with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port) as process:
        assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5004"))
        assert_callee_ok(process)
    routed = server.wait_for("call_routed")
    assert routed["target"] == "pbx2" and routed["failed_attempts"] == ["pbx1: down"]


def test_silent_target_times_out_then_the_next_answers_and_a_lone_one_gives_408(
    start_server: StartServer, tmp_path: Path
) -> None:
    silent, uas_port = free_port(), free_port()
    fast = "\n[timers]\nt1 = 0.05\n"  # Timer B = 64*T1 = 3.2 s
    server = start_server(
        extra_config=plan("unsecured", [("pbx1", silent, "udp"), ("pbx2", uas_port, "udp")]) + fast
    )
    with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port) as process:
        assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5005"))
        assert_callee_ok(process)
    assert server.wait_for("call_routed")["failed_attempts"] == ["pbx1: timeout"]
    lone = start_server(extra_config=plan("unsecured", [("pbx1", silent, "udp")]) + fast)
    assert_sipp_ok(
        sipp_caller(
            invite_expecting(tmp_path / "408.xml", 408, checks={"Warning": "pbx1: timeout"}),
            lone.sip_port,
            "5006",
        )
    )


def test_target_with_the_wrong_certificate_is_skipped(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    uas_port = free_port()
    with stunnel_server(pki, tmp_path, free_port(), "impostor") as impostor:
        targets = [("pbx1", impostor, "tls"), ("pbx2", uas_port, "udp")]
        server = start_server(extra_config=plan("unsecured", targets))
        with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port) as process:
            assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5007"))
            assert_callee_ok(process)
    failed = server.wait_for("outbound_connection_failed")
    assert failed["reason"].startswith(
        "target_name_mismatch: the target's certificate names impostor.example.test"
    )
    routed = server.wait_for("call_routed")
    assert routed["target"] == "pbx2" and routed["failed_attempts"][0].startswith(
        "pbx1: target_name_mismatch"
    )


def test_a_clear_rtp_answer_in_a_secured_call_is_logged_as_a_violation(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    uas_port = free_port()
    with stunnel_server(pki, tmp_path, uas_port, "pbx1") as tls_port_of_pbx:
        server = start_server(extra_config=plan("secured", [("pbx1", tls_port_of_pbx, "tls")]))
        uas = call_uas(tmp_path / "uas.xml", answer_proto="RTP/AVP")
        uac = call_uac(tmp_path / "uac.xml", proto="RTP/SAVP", crypto=True)
        with (
            sipp_callee(uas, uas_port, "t1") as process,
            stunnel_client(pki, tmp_path, server.tls_port) as local,
        ):
            assert_sipp_ok(sipp_caller(uac, local, "+14255550100", "t1"))
            assert_callee_ok(process)
    violation = server.wait_for("security_violation_media_answer")
    assert violation["dial_plan"] == "main" and "is not SRTP" in violation["problems"][0]


def test_outbound_connections_send_crlf_keepalives(start_server: StartServer) -> None:
    """A bare TCP listener stands in for the PBX: after the INVITE it must see RFC 5626
    CRLFCRLF pings on the connection sipserver opened."""
    import socket

    from tests.e2e.sip_client import options, read_response

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        server = start_server(
            extra_config=plan("unsecured", [("pbx1", port, "tcp")]),
            limits="keepalive_interval = 0.2",
        )
        invite = options(
            "127.0.0.1", server.sip_port, method="INVITE", uri="sip:5008@sip.example.test"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller_sock:
            caller_sock.sendto(invite, ("127.0.0.1", server.sip_port))
            connection, _ = listener.accept()
            with connection:
                forwarded = read_response(connection)  # reads one framed message
                assert forwarded.startswith(b"INVITE sip:5008@pbx1.example.test:")
                assert (
                    b";alias" in forwarded.split(b"\r\n")[1]
                )  # our Via offers the connection back
                connection.settimeout(5)
                assert connection.recv(4) == b"\r\n\r\n"
    server.wait_for("outbound_connection_opened", target="pbx1")
