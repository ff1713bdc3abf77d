"""Interop: baresip 1.0 (Debian) as a softphone calling through sipserver over mutual TLS
with its own client certificate, to a sipp callee behind stunnel (mutual TLS), in
sip-secured mode and in secured mode with SRTP (SDES)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.configs import one_target_plan
from tests.e2e.conftest import Pki, StartServer, free_port, need
from tests.e2e.peers import assert_callee_ok, sipp_callee, stunnel_server
from tests.e2e.sipp_scenarios import call_uas

pytestmark = pytest.mark.e2e


def baresip_config(
    folder: Path, pki: Pki, listen_port: int, server_tls_port: int, srtp: bool
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cert = pki.combined("baresip-gw1", pki.gw1)
    (folder / "config").write_text(
        f"poll_method\tepoll\nsip_listen\t127.0.0.1:{listen_port}\nsip_certificate\t{cert}\n"
        f"sip_cafile\t{pki.ca_file}\naudio_player\taubridge,nil\naudio_source\tausine,440\n"
        "audio_alert\taubridge,nil\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\n"
        "module\tausine.so\nmodule\taubridge.so\nmodule\tsrtp.so\nmodule_app\taccount.so\nmodule_app\tmenu.so\n"
    )
    media = ";mediaenc=srtp-mand" if srtp else ""
    (folder / "accounts").write_text(
        f"<sip:gw1@gw1.example.test;transport=tls>;regint=0;"
        f'outbound="sip:127.0.0.1:{server_tls_port};transport=tls"{media}\n'
    )
    (folder / "contacts").write_text("")
    return folder


@pytest.mark.parametrize("security", ["sip-secured", "secured"])
def test_baresip_calls_through_sipserver_over_mutual_tls(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str
) -> None:
    srtp = security == "secured"
    uas_port = free_port()
    with stunnel_server(pki, tmp_path, uas_port, "pbx1") as pbx_tls:
        plan = one_target_plan(security, pbx_tls, "tls", name="hq", numbers=["+1425*"])
        server = start_server(extra_config=plan, server_extra='advertised_host = "127.0.0.1"')
        folder = baresip_config(tmp_path / "baresip", pki, free_port(), server.tls_port, srtp)
        uas = call_uas(
            tmp_path / "uas.xml", answer_proto="RTP/SAVP" if srtp else "RTP/AVP", answer_crypto=srtp
        )
        with sipp_callee(uas, uas_port, "t1") as callee:
            phone = subprocess.run(
                [
                    need("baresip"),
                    "-f",
                    str(folder),
                    "-e",
                    "/dial sip:+14255550100@sip.example.test",
                    "-t",
                    "6",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert_callee_ok(callee)  # INVITE, 180, 200, ACK, then baresip's BYE when it quits
    routed = server.wait_for("call_routed", dial_plan="hq")
    assert (
        routed["status"] == 200 and routed["transport"] == "tls" and routed["security"] == security
    ), phone.stdout
    assert routed["peer"] == "gw1" and routed["peer_cert_serial"] == serial_hex(
        pki.gw1.cert.serial_number
    )
    assert server.wait_for("in_dialog_request_routed", method="BYE")["status"] == 200
