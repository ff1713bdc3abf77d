"""SIGTERM drains: no new connections or calls (503 + Retry-After), calls in flight finish,
then a clean exit; a second SIGTERM stops at once."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import StartServer, free_port
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
    return (
        f'[[peer]]\nname = "pbx1"\nfqdn = "pbx1.example.test"\nkind = "pbx"\naddresses = ["127.0.0.1"]\n'
        f'port = {uas_port}\ntransport = "udp"\nhealth_check = 0\n'
        '[[dial_plan]]\nname = "main"\nsecurity = "unsecured"\nnumbers = ["5xxx"]\nfrom = ["gw1"]\ntargets = ["pbx1"]\n'
    )


def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port = free_port()
    server = start_server(extra_config=plan(uas_port), server_extra="shutdown_grace = 20")
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
