"""Per-peer metrics whose label values come only from the configuration and closed sets:
calls by peer, dial plan and outcome, refusals by peer and reason, setup time per dial
plan, TLS handshakes by peer. A thousand attacker-chosen values (numbers, methods, hosts,
headers) from allow-listed peers add no series."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.configs import dial_plan, peer
from tests.e2e.conftest import Pki, StartServer, free_port
from tests.e2e.peers import assert_sipp_ok, sipp_callee, sipp_caller_command, stunnel_client
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e
CALLS = 5
LABEL = re.compile(r'(\w+)="([^"]*)"')


def metrics(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
        lines = page.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("sipserver_")
    }


def attacker_request(host: str, port: int, n: int, *, method: str, number: str) -> bytes:
    return (
        f"{method} sip:{number}@{host} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP attacker-{n}.example:{1000 + n};branch=z9hG4bK{uuid.uuid4().hex};rport\r\n"
        f"From: <sip:x{n}@evil-{n}.example>;tag={n}\r\nTo: <sip:{number}@{host}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"User-Agent: scanner-{n}\r\nX-{n}: {n}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_per_peer_metrics_count_by_configured_names_only(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    uas_port = free_port()
    server = start_server(
        peer_addresses='"::1"',  # gw1; 127.0.0.1 is pbx1's
        extra_config=peer("pbx1", port=uas_port, transport="udp")
        + dial_plan("main", "unsecured", ["pbx1"], numbers=["6xxx"])
        + '\n[admin]\naddress = "127.0.0.1:0"\n',
    )
    admin = server.wait_for("admin_listener_started")["port"]
    # Calls from gw1 over mutual TLS, routed to pbx1.
    with (
        sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, calls=CALLS),
        stunnel_client(pki, tmp_path, server.tls_port) as local,
    ):
        command = sipp_caller_command(call_uac(tmp_path / "uac.xml"), local, "6000", "t1", CALLS)
        assert_sipp_ok(subprocess.run(command, capture_output=True, text=True, timeout=60))
    server.wait_count("call_routed", CALLS)
    # 500 requests from gw1 (::1) and 500 from pbx1's address (127.0.0.1), to numbers no
    # plan has and with methods nobody knows: every value in them new.
    port = server.sip_port
    for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for n in range(500):
                method = f"M{n}X" if n % 2 else "INVITE"
                sock.sendto(
                    attacker_request(host, port, n, method=method, number=f"9{n:05d}"),
                    (host, port),
                )
                sock.recvfrom(65535)  # answered (403, 404 or 501): the next one may go
    seen = metrics(admin)
    series = list(seen)
    assert len(series) < 150, len(series)
    allowed = {
        "peer": {"", "gw1", "pbx1"},
        "dial_plan": {"", "main"},
        "target": {"pbx1"},
    }
    reasons: set[str] = set()
    for name in series:
        for label, value in LABEL.findall(name):
            if label in allowed:
                assert value in allowed[label], name
            if label == "reason" and name.startswith("sipserver_refusals"):
                reasons.add(value)
            assert "attacker" not in value and "scanner" not in value and "evil" not in value
    assert len(reasons) <= 6, reasons
    key = (
        'sipserver_calls_total{dial_plan="main",outcome="answered",peer="gw1",security="unsecured"}'
    )
    assert seen[key] == CALLS, [s for s in series if s.startswith("sipserver_calls_total")]
    assert seen['sipserver_call_setup_seconds_count{dial_plan="main"}'] == CALLS
    assert seen['sipserver_call_setup_seconds_bucket{dial_plan="main",le="+Inf"}'] == CALLS
    assert seen['sipserver_peer_tls_handshakes_total{peer="gw1",session="full"}'] >= 1
    refusals: dict[str, float] = {}
    for name, value in seen.items():
        if name.startswith("sipserver_refusals_total"):
            who = dict(LABEL.findall(name))["peer"]
            refusals[who] = refusals.get(who, 0) + value
    # Every request was refused, and counted under the peer that sent it.
    assert refusals == {"gw1": 500, "pbx1": 500}, refusals
