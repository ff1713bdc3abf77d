"""Call admission control with real sipp load: a gateway over its max_calls gets 503 for
exactly the excess while another gateway's calls all succeed, a denied number gets 403,
and the counts are back at zero when the calls have ended."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from sipserver.server.repeats import reason_kind
from tests.certs import make_leaf
from tests.configs import dial_plan, one_target_plan, peer, table
from tests.e2e.conftest import Pki, StartServer, free_port
from tests.e2e.peers import (
    assert_callee_ok,
    assert_sipp_ok,
    sipp_callee,
    sipp_caller,
    sipp_caller_command,
    stunnel_client,
)
from tests.e2e.sipp_scenarios import call_uac, call_uas, invite_expecting
from tests.e2e.test_hardening import accounted

pytestmark = pytest.mark.e2e
LIMIT, CALLS = 3, 6


# First in this first e2e module: it waits 3 minutes, while the other workers go on.
def test_a_call_that_rings_until_timer_c_gives_its_count_back(
    start_server: StartServer, tmp_path: Path
) -> None:
    """RFC 3261 §16.8: the PBX rings and never answers; after Timer C (180 s, the least
    the RFC allows) the proxy cancels it and answers 408, and gw1 (max_calls = 1) may call
    again. The longest test here: it waits for the timer itself."""
    uas_port, admin = free_port(), free_port()
    server = start_server(
        extra_config=one_target_plan("unsecured", uas_port, "udp")
        + table("admin", {"address": f"127.0.0.1:{admin}"})
    )
    config = server.workdir / "sipserver.toml"
    config.write_text(
        config.read_text().replace('name = "gw1"\n', 'name = "gw1"\nmax_calls = 1\n', 1)
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    ringing = invite_expecting(tmp_path / "408.xml", 408, checks={"Warning": "Timer C"})
    command = sipp_caller_command(ringing, server.sip_port, "5000", timeout="200s")
    uas = call_uas(tmp_path / "uas.xml", cancel=True)
    with sipp_callee(uas, uas_port, timeout="200s") as callee:
        caller = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
        server.wait_for("call_attempt_started")
        assert_sipp_ok(
            sipp_caller(invite_expecting(tmp_path / "503.xml", 503), server.sip_port, "5001")
        )
        out, _ = caller.communicate(timeout=200)
        assert caller.returncode == 0, out[-3000:]
        assert_callee_ok(callee)
    assert active_calls(admin) == []
    assert len(server.events("call_limit_reached")) == 1


def test_a_gateway_over_max_calls_gets_503_for_the_excess_and_another_is_not_held_back(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    admin = free_port()
    server = start_server(
        peer_addresses='"127.0.0.1"',
        extra_config=peer("gw2", kind="gateway", addresses=[])  # mutual TLS only, no limit
        + dial_plan(
            "echo", "unsecured", [], numbers=["5xxx"], from_=["gw1", "gw2"], action="answer",
            answer_after=2.0,
        )
        + table("admin", {"address": f"127.0.0.1:{admin}"}),
    )  # fmt: skip
    # gw1 (127.0.0.1, UDP) gets its limit with a reload, as an operator would add it.
    config = server.workdir / "sipserver.toml"
    config.write_text(
        config.read_text().replace('name = "gw1"\n', f'name = "gw1"\nmax_calls = {LIMIT}\n', 1)
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    uac = call_uac(tmp_path / "uac.xml", shed_retry_after=30)
    gw2 = make_leaf(pki.ca, dns=["gw2.example.test"])
    with stunnel_client(pki, tmp_path, server.tls_port, gw2) as tls_local:
        # Every call starts within 60 ms and rings for 2 s: all are in progress at once.
        callers = [
            subprocess.Popen(
                sipp_caller_command(uac, port, "5000", transport, calls=CALLS, rate=100),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
            )
            for port, transport in ((server.sip_port, "u1"), (tls_local, "t1"))
        ]  # fmt: skip
        for caller in callers:
            out, _ = caller.communicate(timeout=90)
            assert caller.returncode == 0, out[-3000:]
    refused = server.wait_count("call_limit_reached", CALLS - LIMIT)
    assert len(server.events("call_limit_reached")) == CALLS - LIMIT
    assert {(e["peer"], e["status"]) for e in refused} == {("gw1", 503)}
    assert (
        refused[0]["reason"] == f"Peer gw1 has {LIMIT} calls in progress, its max_calls ({LIMIT})"
    )
    answered = server.wait_count("answered_call_ended", LIMIT + CALLS, timeout=30)
    assert len(answered) == LIMIT + CALLS
    gw2_calls = [e for e in server.events("call_answered") if e["peer"] == "gw2"]
    assert len(gw2_calls) == CALLS
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
        metrics = page.read().decode()
    active = [
        line for line in metrics.splitlines() if line.startswith("sipserver_peer_active_calls{")
    ]
    assert active == [], active  # every call ended: no peer has one in progress
    assert (
        f'sipserver_call_limit_refusals_total{{limit="peer_max_calls",name="gw1"}} {float(CALLS - LIMIT)}'
        in metrics
    )


def test_max_call_rate_holds_within_ten_percent_over_ten_seconds(
    start_server: StartServer, tmp_path: Path
) -> None:
    """sipp offers 20 calls a second for 10 s to a gateway allowed 5 a second (a burst of
    5): 5 x 10 + 5 = 55 calls are admitted, within 10 %, and the rest get 503."""
    rate, burst, offered = 5.0, 5, 200
    server = start_server(
        extra_config=dial_plan(
            "echo", "unsecured", [], numbers=["5xxx"], action="answer", answer_after=0.0
        )
    )
    config = server.workdir / "sipserver.toml"
    config.write_text(
        config.read_text().replace(
            'name = "gw1"\n',
            f'name = "gw1"\nmax_call_rate = {rate}\nmax_call_burst = {burst}\n',
            1,
        )
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    uac = call_uac(tmp_path / "uac.xml", shed_retry_after=30)
    command = sipp_caller_command(uac, server.sip_port, "5000", "u1", calls=offered, rate=20)
    assert_sipp_ok(
        subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    )
    server.wait_until(
        lambda _: (
            len(server.events("call_answered")) + len(server.events("call_limit_reached"))
            == offered
        ),
        10,
        "every call answered or refused",
    )
    refused = server.events("call_limit_reached")
    assert refused[0]["reason"] == (
        f"Peer gw1 starts calls faster than its max_call_rate (5/s, burst {burst})"
    )
    answered = len(server.events("call_answered"))
    expected = rate * offered / 20 + burst  # 10 s of tokens, and the burst
    assert abs(answered - expected) <= 0.1 * expected, (answered, expected)


def active_calls(admin: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
        metrics = page.read().decode()
    return [
        line for line in metrics.splitlines() if line.startswith("sipserver_peer_active_calls{")
    ]


def test_counts_return_to_zero_after_cancel_refusal_timeout_and_a_dead_target(
    start_server: StartServer, tmp_path: Path
) -> None:
    """gw1 may have one call at a time: each way a proxied call can end without a dialog
    must give its count back, or the next call would get 503. (Timer C, at least 180 s,
    is covered by the core's unit test.)"""
    ringer, busy, silent, dead, admin = (free_port() for _ in range(5))
    server = start_server(
        extra_config=peer("pbx1", port=ringer, transport="udp")
        + peer("pbx2", port=busy, transport="udp")
        + peer("pbx3", port=silent, transport="udp")
        + peer("pbx4", port=dead, transport="tcp")
        + dial_plan("cancelled", "unsecured", ["pbx1"], numbers=["51xx"])
        + dial_plan("refused", "unsecured", ["pbx2"], numbers=["52xx"])
        + dial_plan("silent", "unsecured", ["pbx3"], numbers=["53xx"])
        + dial_plan("dead", "unsecured", ["pbx4"], numbers=["54xx"])
        + dial_plan("echo", "unsecured", [], numbers=["5xxx"], action="answer", answer_after=0.0)
        + table("timers", {"t1": 0.05})  # Timer B = 64 x T1 = 3.2 s
        + table("admin", {"address": f"127.0.0.1:{admin}"}),
    )
    config = server.workdir / "sipserver.toml"
    config.write_text(
        config.read_text().replace('name = "gw1"\n', 'name = "gw1"\nmax_calls = 1\n', 1)
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    with sipp_callee(call_uas(tmp_path / "ring.xml", cancel=True), ringer) as callee:
        assert_sipp_ok(
            sipp_caller(call_uac(tmp_path / "cancel.xml", cancel=True), server.sip_port, "5100")
        )
        assert_callee_ok(callee)
    assert server.wait_for("call_ended", dial_plan="cancelled")["status"] == 487
    assert active_calls(admin) == []
    with sipp_callee(call_uas(tmp_path / "busy.xml", refuse="486 Busy Here"), busy) as callee:
        assert_sipp_ok(
            sipp_caller(invite_expecting(tmp_path / "486.xml", 486), server.sip_port, "5200")
        )
        assert_callee_ok(callee)
    assert active_calls(admin) == []
    timeout = invite_expecting(tmp_path / "408.xml", 408, checks={"Warning": "pbx3: timeout"})
    assert_sipp_ok(sipp_caller(timeout, server.sip_port, "5300"))
    assert active_calls(admin) == []
    refused = invite_expecting(tmp_path / "503.xml", 503, checks={"Warning": "pbx4"})
    assert_sipp_ok(sipp_caller(refused, server.sip_port, "5400"))
    assert active_calls(admin) == []
    assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000"))
    assert server.wait_for("call_answered")["peer"] == "gw1"
    assert server.events("call_limit_reached") == []  # no call found the count held
    server.wait_for("answered_call_ended")
    assert active_calls(admin) == []


def test_a_reload_that_lowers_max_calls_keeps_the_calls_and_admits_none_until_under(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port = free_port()
    server = start_server(extra_config=one_target_plan("unsecured", uas_port, "udp"))
    # Three calls ring for 3 s at the PBX (all in progress at once), then are answered.
    uas = call_uas(tmp_path / "uas.xml", answer_delay_ms=3000)
    with sipp_callee(uas, uas_port, calls=4) as callee:
        ringing = subprocess.Popen(
            sipp_caller_command(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000", calls=3, rate=100),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        server.wait_count("call_attempt_started", 3)
        config = server.workdir / "sipserver.toml"
        config.write_text(
            config.read_text().replace('name = "gw1"\n', 'name = "gw1"\nmax_calls = 1\n', 1)
        )
        server.process.send_signal(signal.SIGHUP)
        server.wait_for("config_reloaded")
        over = invite_expecting(
            tmp_path / "503.xml",
            503,
            checks={"Warning": r"Peer gw1 has 3 calls in progress, its max_calls \(1\)"},
        )
        assert_sipp_ok(sipp_caller(over, server.sip_port, "5001"))
        out, _ = ringing.communicate(timeout=60)
        assert ringing.returncode == 0, out[-3000:]  # the three carried on to their end
        assert len(server.wait_count("call_routed", 3)) == 3
        assert_sipp_ok(sipp_caller(call_uac(tmp_path / "after.xml"), server.sip_port, "5002"))
        assert_callee_ok(callee)
    assert len(server.events("call_limit_reached")) == 1


def test_refusals_at_a_limit_are_summarised_like_other_refusals(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A gateway hammering its limit gets a 503 for each call, and the log says it about
    once a second with the count, not 99 times."""
    server = start_server(
        log_extra="repeat_interval = 1.0",
        extra_config=dial_plan(
            "echo", "unsecured", [], numbers=["5xxx"], action="answer", answer_after=0.0
        ),
    )
    config = server.workdir / "sipserver.toml"
    config.write_text(
        config.read_text().replace(
            'name = "gw1"\n', 'name = "gw1"\nmax_call_rate = 0.01\nmax_call_burst = 1\n', 1
        )
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    uac = call_uac(tmp_path / "uac.xml", shed_retry_after=30)
    assert_sipp_ok(
        subprocess.run(
            sipp_caller_command(uac, server.sip_port, "5000", calls=100, rate=50),
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    )  # fmt: skip
    kind = reason_kind(server.wait_for("call_limit_reached")["reason"])
    server.wait_until(
        lambda _: accounted(server, "call_limit_reached", kind) == 99,
        10,
        "99 refusals accounted for",
    )
    assert 1 <= len(server.events("call_limit_reached")) <= 5  # 2 s of calls: not 99 lines
    assert len(server.events("call_answered")) == 1
