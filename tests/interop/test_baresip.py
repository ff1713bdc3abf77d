"""Interop: baresip 1.0 (Debian) as a softphone calling through sipserver over mutual TLS
with its own client certificate, to a sipp callee behind stunnel (mutual TLS), in
sip-secured mode and in secured mode with SRTP (SDES)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import Issued, make_leaf
from tests.configs import dial_plan, one_target_plan, peer
from tests.e2e.conftest import Pki, StartServer, free_baresip_port, free_port, need
from tests.e2e.peers import (
    assert_callee_ok,
    assert_sipp_ok,
    sipp_callee,
    sipp_caller,
    stunnel_client,
    stunnel_server,
)
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e


def baresip_config(
    folder: Path,
    pki: Pki,
    listen_port: int,
    server_tls_port: int,
    srtp: bool,
    *,
    softphone: Issued | None = None,
) -> Path:
    """baresip calling as gw1; or, with `softphone` (phone1's certificate), registering
    7001 as an RFC 5626 client (the uuid module gives it its +sip.instance) and answering
    every call."""
    folder.mkdir(parents=True, exist_ok=True)
    # The bridge device feeds no sound, which is all a signalling test needs (ausine
    # gives up on an 8 kHz call and would end it at once).
    source = "aubridge,nil"
    if softphone is None:
        cert, uuid = pki.combined("baresip-gw1", pki.gw1), ""
    else:
        cert, uuid = pki.combined("baresip-phone1", softphone), "module_tmp\tuuid.so\n"
    (folder / "config").write_text(
        f"poll_method\tepoll\nsip_listen\t127.0.0.1:{listen_port}\nsip_certificate\t{cert}\n"
        f"sip_cafile\t{pki.ca_file}\naudio_player\taubridge,nil\naudio_source\t{source}\n"
        "audio_alert\taubridge,nil\nmodule_path\t/usr/lib/baresip/modules\nmodule\tg711.so\n"
        f"module\taubridge.so\nmodule\tsrtp.so\n{uuid}"
        "module_app\taccount.so\nmodule_app\tmenu.so\n"
    )
    account = (
        "<sip:gw1@gw1.example.test;transport=tls>;regint=0;"
        if softphone is None
        else "<sip:7001@sip.example.test;transport=tls>;regint=120;sipnat=outbound;answermode=auto;"
    )
    media = ";mediaenc=srtp-mand" if srtp else ""
    (folder / "accounts").write_text(
        f'{account}outbound="sip:127.0.0.1:{server_tls_port};transport=tls"{media}\n'
    )
    (folder / "contacts").write_text("")
    return folder


class Baresip:
    """baresip running on a configuration folder, its output read as it comes."""

    def __init__(self, folder: Path, *commands: str) -> None:
        args = [need("baresip"), "-f", str(folder)]
        for command in commands:
            args += ["-e", command]
        # -t: a safety net only; the test ends the call itself.
        self.process = subprocess.Popen(
            [*args, "-t", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = ""

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"baresip never printed {text!r}:\n{self.output[-3000:]}")
            if select.select([self.process.stdout], [], [], min(left, 0.5))[0]:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"baresip quit before {text!r}:\n{self.output[-3000:]}")
                self.output += chunk.decode(errors="replace")

    def hang_up_and_quit(self) -> None:
        """SIGTERM makes baresip end its calls (a BYE for an established one) and quit."""
        self.process.terminate()
        rest, _ = self.process.communicate(timeout=20)
        self.output += rest.decode(errors="replace")

    def kill(self) -> None:
        """Whatever state it is in: a no-op once it has quit."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


@pytest.mark.parametrize("security", ["sip-secured", "secured"])
def test_baresip_calls_through_sipserver_over_mutual_tls(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str
) -> None:
    srtp = security == "secured"
    uas_port = free_port()
    with stunnel_server(pki, tmp_path, uas_port, "pbx1") as pbx_tls:
        plan = one_target_plan(security, pbx_tls, "tls", name="hq", numbers=["+1425*"])
        server = start_server(extra_config=plan, server_extra='advertised_host = "127.0.0.1"')
        folder = baresip_config(
            tmp_path / "baresip", pki, free_baresip_port(), server.tls_port, srtp
        )
        uas = call_uas(
            tmp_path / "uas.xml", answer_proto="RTP/SAVP" if srtp else "RTP/AVP", answer_crypto=srtp
        )
        with sipp_callee(uas, uas_port, "t1") as callee:
            phone = Baresip(folder, "/dial sip:+14255550100@sip.example.test")
            try:
                # Established: baresip has the 200 and has sent its ACK.
                phone.wait_for("Call established")
                phone.hang_up_and_quit()
            finally:
                phone.kill()
            assert_callee_ok(callee, also=phone.output)  # INVITE, 180, 200, ACK, BYE
    routed = server.wait_for("call_routed", dial_plan="hq")
    assert (
        routed["status"] == 200 and routed["transport"] == "tls" and routed["security"] == security
    ), phone.output
    assert routed["peer"] == "gw1" and routed["peer_cert_serial"] == serial_hex(
        pki.gw1.cert.serial_number
    )
    assert server.wait_for("in_dialog_request_routed", method="BYE")["status"] == 200


@pytest.mark.parametrize("security", ["sip-secured", "secured"])
def test_baresip_registers_and_answers_a_gateway_call_over_its_own_connection(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str
) -> None:
    srtp = security == "secured"
    phone_cert = make_leaf(pki.ca, dns=["phone1.example.test"])
    softphone = peer("phone1", kind="softphone", addresses=[], numbers=["7001"], health_check=None)
    plan = dial_plan("phones", security, ["phone1"], numbers=["70xx"])
    server = start_server(extra_config=softphone + plan)
    folder = baresip_config(
        tmp_path / "baresip", pki, free_baresip_port(), server.tls_port, srtp, softphone=phone_cert
    )
    phone = subprocess.Popen(
        [need("baresip"), "-f", str(folder), "-t", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        added = server.wait_for("registration_added", number="7001", timeout=20)
        assert added["transport"] == "tls" and added["reg_id"] == 1 and added["instance"]
        uac = call_uac(tmp_path / "uac.xml", proto="RTP/SAVP" if srtp else "RTP/AVP", crypto=srtp)
        with stunnel_client(pki, tmp_path, server.tls_port) as gateway:
            call = sipp_caller(uac, gateway, "7001", "t1")
        assert_sipp_ok(call)
    finally:
        phone.terminate()
        out, _ = phone.communicate(timeout=20)
    routed = server.wait_for("call_routed", dial_plan="phones")
    assert (routed["target"], routed["target_transport"], routed["security"]) == (
        "phone1",
        "tls",
        security,
    ), out[-2000:]
    # The call line names the certificate the softphone registered with.
    assert routed["target_cert_serial"] == serial_hex(phone_cert.cert.serial_number)
    assert server.events("security_violation_media_answer") == []
    removed = server.wait_for("registration_removed", number="7001", timeout=20)
    assert removed["reason"] in ("unregistered (expires 0)", "connection closed: closed by peer")
