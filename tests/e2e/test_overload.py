"""Graceful overload: a bounded burst of calls into a server told to shed early. Every
call ends well: admitted ones are answered and hung up through us, the rest get 503 with
Retry-After at once; the overload is logged when it starts and when it ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.configs import one_target_plan
from tests.e2e.conftest import StartServer, free_port
from tests.e2e.peers import assert_sipp_ok, sipp_callee, sipp_caller_command
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e
CALLS = 120


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
