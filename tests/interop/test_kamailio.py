"""Interop: Kamailio (Debian kamailio + kamailio-tls-modules) as a gateway sending a call to
sipserver over mutual TLS, and as the PBX receiving it from sipserver over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import make_leaf
from tests.configs import one_target_plan
from tests.e2e.conftest import Pki, StartServer, free_port
from tests.e2e.peers import assert_callee_ok, kamailio, sipp_callee, sipp_caller
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent


@pytest.mark.parametrize("security", ["sip-secured", "secured"])
def test_a_call_from_a_kamailio_gateway_to_a_kamailio_pbx(
    start_server: StartServer, pki: Pki, tmp_path: Path, security: str
) -> None:
    gw_udp, pbx_tls, callee_udp = free_port(), free_port(), free_port()
    plan = one_target_plan(security, pbx_tls, "tls", name="hq", numbers=["+1425*"])
    # Kamailio must reach our Record-Route host for ACK/BYE; it cannot resolve the test FQDN.
    server = start_server(extra_config=plan, server_extra='advertised_host = "127.0.0.1"')
    gw_cert, gw_key = pki.client_files("kamailio-gw1", pki.gw1)
    pbx_cert, pbx_key = make_leaf(pki.ca, dns=["pbx1.example.test"]).write_pair(tmp_path, "pbx1")
    (tmp_path / "tls.cfg").write_text(
        (HERE / "tls.cfg.template")
        .read_text()
        .format(pbx_cert=pbx_cert, pbx_key=pbx_key, gw_cert=gw_cert, gw_key=gw_key, ca=pki.ca_file)
    )
    config = (HERE / "kamailio-tls.cfg").read_text()
    for name, value in (
        ("GW_UDP", gw_udp),
        ("PBX_TLS", pbx_tls),
        ("SIPSERVER_TLS", server.tls_port),
        ("CALLEE_UDP", callee_udp),
        ("TLS_CFG", tmp_path / "tls.cfg"),
    ):
        config = config.replace(f"!{name}!0!g", f"!{name}!{value}!g").replace(
            f"!{name}!tls.cfg!g", f"!{name}!{value}!g"
        )
    (tmp_path / "kamailio.cfg").write_text(config)
    with kamailio(tmp_path / "kamailio.cfg") as running:
        srtp = security == "secured"
        uac = call_uac(tmp_path / "uac.xml", proto="RTP/SAVP" if srtp else "RTP/AVP", crypto=srtp)
        uas = call_uas(
            tmp_path / "uas.xml", answer_proto="RTP/SAVP" if srtp else "RTP/AVP", answer_crypto=srtp
        )
        with sipp_callee(uas, callee_udp) as callee:
            result = sipp_caller(uac, gw_udp, "+14255550100")
            assert result.returncode == 0, result.stdout[-2000:] + running.tail()
            assert_callee_ok(callee)
        accepted = server.wait_for("tls_peer_accepted", peer="gw1")
        assert accepted["peer_cert_serial"] == serial_hex(pki.gw1.cert.serial_number)
        assert (
            server.wait_for("tls_target_accepted", target="pbx1")["target_cert_subject"]
            == "CN=pbx1.example.test"
        )
        routed = server.wait_for("call_routed", dial_plan="hq")
        assert (
            routed["status"] == 200
            and routed["security"] == security
            and routed["transport"] == "tls"
        )
        assert any("peer verified: 1" in line for line in running.log), running.tail()
