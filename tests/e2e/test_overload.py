"""Graceful overload: a bounded burst of calls into a server told to shed early. Every
call ends well: admitted ones are answered and hung up through us, the rest get 503 with
Retry-After at once; the overload is logged when it starts and when it ends."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.configs import answer_plan, one_target_plan
from tests.e2e.conftest import StartServer, free_port
from tests.e2e.peers import assert_sipp_ok, sipp_callee, sipp_caller_command
from tests.e2e.sip_client import options, status_line
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e
CALLS = 120
PAD = "X-Pad: " + "p" * 7000 + "\r\n"


def test_a_burst_above_capacity_sheds_new_calls_with_503_and_completes_the_admitted(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port = free_port()
    # Shedding starts when the loop is busy 2 % of two quarter seconds running, whatever
    # the backlog: any real burst, on any machine.
    server = start_server(
        extra_config=one_target_plan("unsecured", uas_port, "udp"),
        limits="overload_busy = 0.02\noverload_backlog_bytes = 0\noverload_retry_after = 7",
    )
    uas = call_uas(tmp_path / "uas.xml")
    uac = call_uac(tmp_path / "uac.xml", shed_retry_after=7)
    with sipp_callee(uas, uas_port, calls=CALLS):
        command = sipp_caller_command(uac, server.sip_port, "5000", calls=CALLS, rate=120)
        result = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert_sipp_ok(result)  # every call ended: answered and hung up, or shed with 503
        server.wait_for("server_overloaded")
        answered = server.events("call_routed")
        shed = server.events("call_shed")
        assert shed, "the burst was never shed"
        assert all(e["status"] == 503 for e in shed)
        assert answered and all(e["status"] == 200 for e in answered)
        assert len(answered) + len(shed) == CALLS
        # Admitted calls hung up through us: their BYE passed (logged at debug).
        assert len(
            server.wait_count("in_dialog_request_routed", len(answered), method="BYE")
        ) == len(answered)
        ended = server.wait_for("server_overload_ended", timeout=15)
        assert ended["calls_shed"] >= 1


def test_a_udp_backlog_is_seen_and_shed_and_the_kernels_drops_are_counted(
    start_server: StartServer,
) -> None:
    """The server is stopped while 1,500 INVITEs of 7 KB (10 MB, more than any receive
    buffer the kernel grants) arrive over UDP: its queue fills and the kernel drops the
    rest. Resumed, it sees the queue (its bytes, not the next datagram's size), sheds new
    calls with 503 like on TCP, and exports the drops."""
    server = start_server(
        extra_config=answer_plan("unsecured", numbers=["5xxx"])
        + '\n[admin]\naddress = "127.0.0.1:0"\n',
        limits="overload_busy = 0.5\noverload_backlog_bytes = 4096\noverload_retry_after = 7",
    )
    admin = server.wait_for("admin_listener_started")["port"]
    port = server.sip_port
    statuses: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        server.process.send_signal(signal.SIGSTOP)
        try:
            for n in range(1500):
                invite = options(
                    "127.0.0.1", port, method="INVITE", uri=f"sip:5{n % 1000:03d}@x", extra=PAD
                )
                sock.sendto(invite, ("127.0.0.1", port))
        finally:
            server.process.send_signal(signal.SIGCONT)
        overloaded = server.wait_for("server_overloaded", timeout=20)
        sock.settimeout(1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            s.endswith("503 Service Unavailable") for s in statuses
        ):
            with contextlib.suppress(TimeoutError):
                statuses.append(status_line(sock.recvfrom(65535)[0]))
    assert overloaded.get("backlog_bytes", 0) > 4 * 4096, overloaded
    shed = [s for s in statuses if s.startswith("SIP/2.0 503")]
    assert shed, sorted(set(statuses))
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
        metrics = page.read().decode()
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("sipserver_udp_receive_dropped_total")
    ]
    assert dropped and float(dropped[0].split()[-1]) > 0, dropped
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as page:
        assert json.loads(page.read())["udp_receive_dropped"] > 0
