"""Peer certificate watch with real handshakes: a gateway whose certificate expires within
the warning window is warned about (log, metric, /healthz), its renewal is logged as a
change naming both serials, and the table survives the server for `certs peers`."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import NOW, make_leaf
from tests.configs import dial_plan, peer
from tests.e2e.conftest import REPO, Pki, StartServer, free_port
from tests.e2e.peers import stunnel_server
from tests.e2e.sip_client import status_line
from tests.e2e.test_tls import client_context, tls_options

pytestmark = pytest.mark.e2e


def test_an_expiring_gateway_certificate_is_warned_about_and_its_renewal_is_noticed(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server(
        extra_config='\n[admin]\naddress = "127.0.0.1:0"\n',
        tls_extra='peer_table = "peers.json"\npeer_expiry_warning_days = 30',
    )
    old = make_leaf(pki.ca, dns=["gw1.example.test"], not_after=NOW + dt.timedelta(days=10))
    assert status_line(tls_options(server, client_context(pki, old, "gw1-old"))) == "SIP/2.0 200 OK"
    warning = server.wait_for("peer_certificate_expiring", peer="gw1")
    assert warning["days_left"] == 10 and warning["expires_by"] == "certificate"
    assert warning["serial"] == serial_hex(old.cert.serial_number)

    admin = server.wait_for("admin_listener_started")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    value = re.search(r'sipserver_peer_certificate_days_to_expiry\{peer="gw1"\} (\S+)', metrics)
    assert value is not None
    days_left = (old.cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    assert abs(float(value.group(1)) - days_left) < 0.01
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read())["peers_expiring"] == ["gw1"]

    renewed = make_leaf(pki.ca, dns=["gw1.example.test"], not_after=NOW + dt.timedelta(days=400))
    reply = tls_options(server, client_context(pki, renewed, "gw1-new"))
    assert status_line(reply) == "SIP/2.0 200 OK"
    changed = server.wait_for("peer_certificate_changed", peer="gw1")
    assert changed["old_serial"] == serial_hex(old.cert.serial_number)
    assert changed["new_serial"] == serial_hex(renewed.cert.serial_number)
    assert changed["issuer_changed"] is False

    # A gateway that keeps trying with an expired certificate: an error that says so.
    expired = make_leaf(
        pki.ca,
        dns=["gw1.example.test"],
        not_before=NOW - dt.timedelta(days=30),
        not_after=NOW - dt.timedelta(days=2),
    )
    assert tls_options(server, client_context(pki, expired, "gw1-expired")) == b""
    error = server.wait_for("peer_certificate_expired", peer="gw1")
    assert error["reason"] == "certificate_expired" and error["days_since"] == 2
    assert server.stop() == 0

    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipserver",
            "certs",
            "peers",
            "--json",
            "--config",
            str(server.workdir / "sipserver.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert shown.returncode == 0, shown.stderr
    rows = {row["peer"]: row for row in json.loads(shown.stdout)["peers"]}
    gw1 = rows["gw1"]
    assert gw1["status"] == "ok" and gw1["serial"] == serial_hex(renewed.cert.serial_number)
    assert gw1["direction"] == "inbound" and gw1["matched"] == "san_dns gw1.example.test"
    assert 399 < gw1["days_left"] <= 400
    # A server started again on that table knows the peer at once.
    table = server.workdir / "peers.json"
    again = start_server(tls_extra=f'peer_table = "{table}"')
    assert again.wait_for("peer_table_loaded")["peers"] == 1


def test_a_target_pbx_certificate_is_known_from_its_health_check_before_any_call(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    with stunnel_server(pki, tmp_path, free_port(), "pbx1") as pbx_tls:
        plan = peer("pbx1", port=pbx_tls, transport="tls", health_check=1) + dial_plan(
            "hq", "sip-secured", ["pbx1"]
        )
        server = start_server(extra_config=plan, tls_extra='peer_table = "peers.json"')
        accepted = server.wait_for("tls_target_accepted", timeout=15)
        assert accepted["target_fqdn"] == "pbx1.example.test"
        assert server.events("call_routed") == []
        assert server.stop() == 0
    rows = json.loads((server.workdir / "peers.json").read_text())["peers"]
    assert rows["pbx1"]["direction"] == "outbound"
    assert rows["pbx1"]["thumbprint_sha256"] == accepted["target_cert_thumbprint_sha256"]
