"""Logs that never name the wrong certificate: a gateway -> sipserver -> PBX call over
mutual TLS on both legs (stunnel in front of sipp on each side), and every line of the log
checked against what each connection presented: a line about a connection carries only
that connection's identity and certificate, and a call line keeps the caller's and the
target's apart, each under its own name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e

FQDNS = {"gw1": "gw1.example.test", "pbx1": "pbx1.example.test"}


def test_each_line_names_only_the_certificates_of_what_it_is_about(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    uas_port = free_port()
    with stunnel_server(pki, tmp_path, uas_port, "pbx1") as pbx_port:
        server = start_server(
            extra_config=peer("pbx1", port=pbx_port, transport="tls")
            + dial_plan("main", "sip-secured", ["pbx1"], numbers=["+1*"])
        )
        with (
            sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, "t1") as callee,
            stunnel_client(pki, tmp_path, server.tls_port) as local,
        ):
            assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), local, "+14255550100", "t1"))
            assert_callee_ok(callee)
        routed = server.wait_for("call_routed", dial_plan="main")
    server.stop()  # every connection_closed line is written
    lines = server.lines

    # What each connection presented, from its own handshake line.
    inbound: dict[int, dict[str, Any]] = {}
    outbound: dict[int, dict[str, Any]] = {}
    for line in lines:
        if line["event"] == "tls_peer_accepted":
            inbound[line["connection_id"]] = line
        elif line["event"] == "tls_target_accepted":
            outbound[line["connection_id"]] = line
    assert len(inbound) == 1 and len(outbound) == 1, (inbound, outbound)
    (gw_connection,) = inbound
    (pbx_connection,) = outbound
    gw_cert = inbound[gw_connection]["peer_cert_thumbprint_sha256"]
    pbx_cert = outbound[pbx_connection]["target_cert_thumbprint_sha256"]
    assert inbound[gw_connection]["peer"] == "gw1" and outbound[pbx_connection]["target"] == "pbx1"

    checked = 0
    for line in lines:
        connection = line.get("connection_id")
        peer_cert = line.get("peer_cert_thumbprint_sha256")
        target_cert = line.get("target_cert_thumbprint_sha256")
        # One identity per name: a peer's FQDN is that peer's, and so is a target's.
        if "peer" in line and "peer_fqdn" in line:
            assert FQDNS.get(line["peer"]) == line["peer_fqdn"], line
        if "target" in line and "target_fqdn" in line:
            assert FQDNS.get(line["target"]) == line["target_fqdn"], line
        if connection == pbx_connection:  # our leg to the PBX: nothing of the gateway's
            assert line.get("peer") is None and peer_cert is None, line
            assert target_cert in (None, pbx_cert), line
            assert line.get("target") in (None, "pbx1"), line
            checked += 1
        elif connection == gw_connection:  # the gateway's connection
            assert line.get("peer") in (None, "gw1") and peer_cert in (None, gw_cert), line
            if target_cert is not None:  # a call line names its target apart
                assert line.get("target_connection_id") == pbx_connection, line
            checked += 1
        if peer_cert is not None:
            assert peer_cert == gw_cert, line
        if target_cert is not None:
            assert target_cert == pbx_cert, line
    assert checked >= 6  # handshakes, opened/closed, the call lines
    closed = {line["connection_id"]: line for line in lines if line["event"] == "connection_closed"}
    assert closed[pbx_connection]["target_cert_thumbprint_sha256"] == pbx_cert
    assert closed[pbx_connection].get("peer_cert_thumbprint_sha256") is None
    assert closed[gw_connection]["peer_cert_thumbprint_sha256"] == gw_cert
    # The call line: the caller's connection and certificate, the target's apart.
    assert (routed["connection_id"], routed["peer"], routed["peer_cert_thumbprint_sha256"]) == (
        gw_connection,
        "gw1",
        gw_cert,
    )
    assert (routed["target_connection_id"], routed["target_cert_thumbprint_sha256"]) == (
        pbx_connection,
        pbx_cert,
    )
