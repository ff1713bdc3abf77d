"""SIGTERM drains: no new connections or calls (503 + Retry-After), calls in flight finish,
then a clean exit; a second SIGTERM stops at once."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.configs import one_target_plan
from tests.e2e.conftest import Pki, StartServer, free_port
from tests.e2e.peers import (
    assert_callee_ok,
    assert_sipp_ok,
    sipp_callee,
    sipp_caller,
    sipp_caller_command,
)
from tests.e2e.sipp_scenarios import call_uac, call_uas, invite_expecting

pytestmark = pytest.mark.e2e


def plan(uas_port: int) -> str:
    return one_target_plan("unsecured", uas_port, "udp")


def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port = free_port()
    server = start_server(
        extra_config=plan(uas_port) + '\n[admin]\naddress = "127.0.0.1:0"\n',
        server_extra="shutdown_grace = 20",
    )
    admin_port = server.wait_for("admin_listener_started")["port"]
    with sipp_callee(call_uas(tmp_path / "uas.xml", answer_delay_ms=2500), uas_port) as callee:
        caller = subprocess.Popen(
            sipp_caller_command(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        server.wait_for("call_attempt_started", target="pbx1")
        server.process.send_signal(signal.SIGTERM)
        draining = server.wait_for("server_draining")
        assert draining["busy"] >= 1
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5)
        assert unhealthy.value.code == 503 and json.load(unhealthy.value)["problems"] == [
            "shutting down"
        ]
        refused = invite_expecting(
            tmp_path / "503.xml",
            503,
            checks={"Retry-After": "^ *[0-9]+$", "Warning": "Server is shutting down"},
        )
        assert_sipp_ok(sipp_caller(refused, server.sip_port, "5001"))
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", server.sip_port), timeout=5),
        ):
            pass
        out, _ = caller.communicate(timeout=60)
        assert caller.returncode == 0, out[-3000:]  # the call in flight completed, BYE included
        assert_callee_ok(callee)
    assert server.process.wait(30) == 0
    drained = server.wait_for("server_drained")
    assert drained["unfinished"] == 0
    assert server.wait_for("call_routed")["status"] == 200


def test_a_second_sigterm_stops_at_once(start_server: StartServer, tmp_path: Path) -> None:
    uas_port = free_port()
    server = start_server(extra_config=plan(uas_port), server_extra="shutdown_grace = 60")
    with sipp_callee(call_uas(tmp_path / "uas.xml", answer_delay_ms=30000), uas_port):
        caller = subprocess.Popen(
            sipp_caller_command(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        try:
            server.wait_for("call_attempt_started")
            server.process.send_signal(signal.SIGTERM)
            server.wait_for("server_draining")
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(10) == 0
            server.wait_for("server_stopping_now")
        finally:
            caller.kill()
            caller.wait(10)


def test_healthz_and_metrics_after_real_traffic(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    from tests.interop.test_sipp_sipsak import sipp

    server = start_server(extra_config='\n[admin]\naddress = "127.0.0.1:0"\n')
    port = server.wait_for("admin_listener_started")["port"]
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        body = json.load(response)
    assert response.status == 200 and body["status"] == "ok"
    # IPv6 listeners in brackets, as in every address we write.
    assert f"udp:[::1]:{server.sip_port}" in body["listeners"], body["listeners"]
    assert f"tls:127.0.0.1:{server.tls_port}" in body["listeners"]
    assert (
        body["certificate"]["thumbprint_sha1"]
        == server.wait_for("server_certificate_selected")["thumbprint_sha1"]
    )
    assert sipp("127.0.0.1", server.sip_port, "u1", calls=7).returncode == 0
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="sip.example.test") as tls:
                tls.recv(10)  # no client certificate: refused
        except (ssl.SSLError, ConnectionResetError):
            pass
    server.wait_for("tls_peer_refused", reason="no_client_certificate")
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert (
        lines[
            'sipserver_messages_total{direction="in",kind="request",method_or_status="OPTIONS",transport="udp"}'
        ]
        == 7
    )
    assert (
        lines[
            'sipserver_messages_total{direction="out",kind="response",method_or_status="2xx",transport="udp"}'
        ]
        == 7
    )
    assert (
        lines['sipserver_tls_handshakes_total{reason="no_client_certificate",result="refused"}']
        == 1
    )
    days = [
        v
        for k, v in lines.items()
        if k.startswith('sipserver_certificate_days_to_expiry{role="server"')
    ]
    assert len(days) == 1 and 360 < days[0] < 366
    assert 'sipserver_reloads_total{result="failed"}' in lines
    server.process.send_signal(signal.SIGTERM)
    server.wait_for("server_stopped")
