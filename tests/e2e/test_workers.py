"""`server.workers = 2`: two processes share the listening ports (SO_REUSEPORT). Calls
spread over both complete, because each worker's Via and Record-Route name a port of its
own, so responses and in-dialog requests come back to the worker that routed the call;
a reload (SIGHUP, or a renewed certificate file) and a drain (SIGTERM) reach both; each
warns of its certificate's expiry; /metrics adds up over both; every log line says which
worker wrote it."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import select
import signal
import subprocess
import threading
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import make_leaf
from tests.configs import answer_plan, one_target_plan, peer, table
from tests.e2e.conftest import (
    SERVER_FQDN,
    Pki,
    RunningServer,
    StartServer,
    free_port,
    served_serial,
)
from tests.e2e.peers import SIPP_PORT_TAKEN, assert_callee_ok, sipp_callee, sipp_caller_command
from tests.e2e.sip_client import options, udp_exchange
from tests.e2e.sipp_scenarios import call_uac, call_uac_answered_then_hung_up, call_uas
from tests.e2e.test_tls import client_context, tls_options

pytestmark = pytest.mark.e2e

CALLERS = 8  # separate sockets: the kernel spreads them over the workers by source port
CALLS_EACH = 2


def two_workers(
    start_server: StartServer, uas_port: int, admin: int, extra: str = ""
) -> RunningServer:
    return start_server(
        server_extra="workers = 2\n" + extra,
        extra_config=one_target_plan("unsecured", uas_port, "udp")
        + table("admin", {"address": f"127.0.0.1:{admin}"}),
    )


def page(admin: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as response:
        return str(response.read().decode())


def test_calls_spread_over_two_workers_complete_and_metrics_add_up(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port, admin = free_port(), free_port()
    server = two_workers(start_server, uas_port, admin)
    ready = server.wait_for("server_ready")
    assert (ready["workers"], ready["worker"]) == (2, "main")
    calls = CALLERS * CALLS_EACH
    uac = call_uac(tmp_path / "uac.xml")
    with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, calls=calls) as callee:
        callers = [
            subprocess.Popen(
                sipp_caller_command(uac, server.sip_port, "5000", calls=CALLS_EACH),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp_path,
            )
            for _ in range(CALLERS)
        ]
        for caller in callers:
            out, _ = caller.communicate(timeout=90)
            assert caller.returncode == 0, out[-3000:]
        assert_callee_ok(callee)
    routed = server.wait_count("call_routed", calls, dial_plan="main")
    byes = server.wait_count("in_dialog_request_routed", calls, method="BYE")
    # Every call's BYE came back, through our Record-Route, to the worker that routed it.
    worker_of = {line["call_id"]: line["worker"] for line in routed}
    assert len(worker_of) == len(routed) == calls  # each call routed once, by one worker
    assert {line["call_id"]: line["worker"] for line in byes} == worker_of
    per_worker: dict[int, int] = defaultdict(int)
    for worker in worker_of.values():
        per_worker[worker] += 1
    assert set(per_worker) <= {0, 1}
    metrics = page(admin, "/metrics")
    answered = next(
        line
        for line in metrics.splitlines()
        if line.startswith("sipserver_calls_total{") and 'outcome="answered"' in line
    )
    assert float(answered.split()[-1]) == calls  # summed over the workers
    assert "sipserver_workers_up 2.0" in metrics
    health = json.loads(page(admin, "/healthz"))
    assert health["status"] == "ok" and health["workers"] == 2
    # Each worker listens on the shared ports and on its own.
    shared = [e for e in server.events("listener_started") if not e.get("own")]
    own = [e for e in server.events("listener_started") if e.get("own")]
    assert {e["worker"] for e in shared} == {e["worker"] for e in own} == {0, 1}
    assert len({e["port"] for e in shared if e["transport"] == "udp"}) == 1
    assert len({e["port"] for e in own if e["transport"] == "udp"}) == 2
    # Every line says who wrote it: a worker's index, or "main" for the supervisor.
    writers = {line.get("worker") for line in server.lines}
    assert writers == {0, 1, "main"}, writers
    for raw in list(server.raw):  # nothing written outside the JSON log
        assert isinstance(json.loads(raw), dict), raw


def test_reload_and_drain_reach_both_workers(start_server: StartServer) -> None:
    server = two_workers(start_server, free_port(), free_port())
    server.wait_for("server_ready")
    server.process.send_signal(signal.SIGHUP)
    reloaded = server.wait_count("config_reloaded", 2)
    assert {line["worker"] for line in reloaded} == {0, 1}
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    drained = server.wait_count("server_draining", 2)
    assert {line["worker"] for line in drained} == {0, 1}
    assert server.wait_for("server_stopped", worker="main")["workers"] == 2


def worker_pid(supervisor: int, index: int) -> int:
    # trio starts processes from a thread: ask every thread of the supervisor.
    tasks = Path(f"/proc/{supervisor}/task").glob("*/children")
    children = [pid for task in tasks for pid in task.read_text().split()]
    (pid,) = [
        pid
        for pid in children
        if f"--worker-index\x00{index}\x00" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    return int(pid)


def messages_received(admin: int) -> float:
    """The summed count of SIP messages received, over every worker."""
    text = page(admin, "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sipserver_messages_total{") and 'direction="in"' in line
    )


def ping_from_many_sockets(port: int, sockets: int = 16) -> None:
    """OPTIONS from `sockets` source ports: the kernel spreads them over both workers."""
    for _ in range(sockets):
        assert udp_exchange("127.0.0.1", port, options("127.0.0.1", port)).startswith(b"SIP/2.0")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_that_dies_is_replaced_within_2_s_and_the_sums_never_go_back(
    start_server: StartServer, how: signal.Signals
) -> None:
    admin = free_port()
    server = two_workers(start_server, free_port(), admin)
    server.wait_for("server_ready")
    ping_from_many_sockets(server.sip_port)
    before = messages_received(admin)  # the supervisor now holds both workers' counts
    assert before >= 16
    os.kill(worker_pid(server.process.pid, 1), how)
    exited = server.wait_for("worker_exited", worker_index=1, timeout=15)
    # SIGTERM drains the worker, which then exits 0: not asked by us, so it is replaced.
    assert exited["action"] == "restarted"
    assert exited["returncode"] == (-how if how == signal.SIGKILL else 0)
    # While it is down, the sums keep what it had counted and /healthz names it.
    during = messages_received(admin)
    assert during >= before
    replaced = server.wait_for("worker_replaced", worker_index=1, timeout=15)
    assert replaced["seconds"] < 2.0, replaced  # the promise to operators, not a speed test
    ready = server.wait_count("worker_ready", 3, timeout=20)
    assert [line["worker"] for line in ready].count(1) == 2
    # No "address in use" for the admin socket the dead worker left behind.
    assert not [line for line in server.lines if line.get("event") == "server_start_failed"]
    health = json.loads(page(admin, "/healthz"))
    assert health["status"] == "ok" and health["workers_down"] == [], health
    assert [w["restarts"] for w in health["per_worker"]] == [0, 1]
    ping_from_many_sockets(server.sip_port)
    after = messages_received(admin)
    assert after >= during + 16
    assert "sipserver_worker_restarts_total 1.0" in page(admin, "/metrics")
    # It stays up: the replacement is not the one that exits again a moment later.
    os.kill(worker_pid(server.process.pid, 1), 0)
    assert len(server.events("worker_exited")) == 1


def test_a_renewed_certificate_reaches_both_workers_and_each_warns_of_its_expiry(
    start_server: StartServer, pki: Pki
) -> None:
    admin = free_port()
    server = start_server(
        server_extra="workers = 2\nwatch_interval = 0.2\nreload_debounce = 0.2",
        tls_extra="certificate_check_interval = 0.5",
        extra_config=table("admin", {"address": f"127.0.0.1:{admin}"}),
    )
    server.wait_for("server_ready")
    # As an ACME client renews: the same file names, a new certificate (this one runs out
    # in five days, inside the 30-day warning window).
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=5)
    renewed = make_leaf(pki.ca, dns=[SERVER_FQDN], not_after=not_after)
    renewed.write_pair(server.workdir / "server", "sip")
    serial = serial_hex(renewed.cert.serial_number)
    reloaded = server.wait_count("config_reloaded", 2, timeout=20)
    assert {line["worker"] for line in reloaded} == {0, 1}
    selected = server.wait_count("server_certificate_selected", 2, timeout=20, serial=serial)
    assert {line["worker"] for line in selected} == {0, 1}
    # One voice per server: worker 0 warns, once (the other worker serves it all the same).
    expiring = server.wait_for("server_certificate_expiring", timeout=20, serial=serial)
    assert expiring["worker"] == 0 and expiring["days_left"] in (4, 5)
    # The kernel hands new connections to either worker: every one gets the new certificate.
    assert {served_serial(server.tls_port, pki) for _ in range(16)} == {renewed.cert.serial_number}
    days = [
        float(line.split()[-1])
        for line in page(admin, "/metrics").splitlines()
        if line.startswith("sipserver_certificate_days_to_expiry{") and 'role="server"' in line
    ]
    assert days and max(days) <= 5
    assert [line["worker"] for line in server.events("server_certificate_expiring")] == [0]


GATEWAYS = 16  # all on one worker: 1 run in 32,768


def test_the_peer_table_holds_what_either_worker_saw_and_worker_0_warns_once(
    start_server: StartServer, pki: Pki
) -> None:
    """Sixteen gateways, each seen once, by whichever worker the kernel picked: the table has
    them all, and each expiring one is warned about once, by worker 0."""
    names = [f"gw{i}" for i in range(2, 2 + GATEWAYS)]
    server = start_server(
        server_extra="workers = 2",
        tls_extra='peer_table = "peers.json"\ncertificate_check_interval = 0.5',
        extra_config="".join(peer(name, kind="gateway") for name in names),
    )
    server.wait_for("server_ready")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=9)
    for name in names:
        cert = make_leaf(pki.ca, dns=[f"{name}.example.test"], not_after=soon)
        reply = tls_options(server, client_context(pki, cert, name))
        assert reply.startswith(b"SIP/2.0 200"), reply[:80]
    accepted = server.wait_count("tls_peer_accepted", GATEWAYS)
    seen_by = {line["peer"]: line["worker"] for line in accepted}
    assert set(seen_by.values()) == {0, 1}, seen_by  # the kernel used both
    warned = server.wait_count("peer_certificate_expiring", GATEWAYS, timeout=20)
    assert sorted(line["peer"] for line in warned) == sorted(names)
    assert {line["worker"] for line in warned} == {0}
    table = json.loads((server.workdir / "peers.json").read_text())
    assert sorted(table["peers"]) == sorted(names)


def summed(admin: int, family: str, **labels: str) -> float:
    text = page(admin, "/metrics")
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(family + "{") and all(w in line for w in wanted)
    )


def test_a_worker_killed_under_call_load_comes_back_serves_and_no_sum_goes_back(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port, admin = free_port(), free_port()
    # The calls the dead worker's callers left open would hold the final drain 30 s.
    server = two_workers(start_server, uas_port, admin, "shutdown_grace = 1")
    server.wait_for("server_ready")
    uac = call_uac(tmp_path / "uac.xml")
    samples: list[tuple[float, float]] = []
    sampling = threading.Event()
    sampled = threading.Condition()

    def sample() -> None:  # what a Prometheus scraping every 100 ms would see
        while not sampling.wait(0.1):
            taken = (
                summed(admin, "sipserver_messages_total", direction="in"),
                summed(admin, "sipserver_calls_total"),
            )
            with sampled:
                samples.append(taken)
                sampled.notify_all()

    def sampled_at_least(count: int) -> int:
        with sampled:  # scrapes slow down under load: wait for them, bounded
            assert sampled.wait_for(lambda: len(samples) >= count, timeout=30), samples
            return len(samples)

    def callers(calls_each: int, rate: int, count: int = CALLERS) -> list[subprocess.Popen[str]]:
        return [
            subprocess.Popen(
                sipp_caller_command(uac, server.sip_port, "5000", calls=calls_each, rate=rate),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp_path,
            )
            for _ in range(count)
        ]

    sampler = threading.Thread(target=sample, daemon=True)
    # The calls the dead worker held stay open in the callee (its 200s are never ACKed):
    # room for them, or sipp's default limit of open calls stops it taking new ones.
    with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, calls=100_000, limit=5000):
        sampler.start()
        load = callers(calls_each=60, rate=20)  # 8 x 20 calls/s for 3 s
        server.wait_count("call_routed", 40, worker=1, timeout=30)
        before_kill = sampled_at_least(2)  # the sums as they were, under load
        os.kill(worker_pid(server.process.pid, 1), signal.SIGKILL)
        server.wait_for("worker_replaced", worker_index=1, timeout=15)
        for caller in load:  # it has loaded the kill; calls the dead worker held are lost
            caller.kill()
            caller.communicate(timeout=30)
        # After it: every call completes, whichever worker the kernel gives it to (16
        # sockets: all on one worker is one run in 32,768).
        before = len(server.events("call_routed"))
        for caller in callers(calls_each=CALLS_EACH, rate=10, count=16):
            out, _ = caller.communicate(timeout=90)
            if caller.returncode != 0 and SIPP_PORT_TAKEN in out:  # it placed no call
                caller = callers(calls_each=CALLS_EACH, rate=10, count=1)[0]
                out, _ = caller.communicate(timeout=90)
            assert caller.returncode == 0, out[:600] + out[-1500:] + "".join(server.raw[-60:])
        routed = server.wait_count("call_routed", before + 16 * CALLS_EACH)[before:]
        assert {line["worker"] for line in routed} == {0, 1}, "the replacement took no call"
        sampled_at_least(before_kill + 3)  # and as they are after the replacement
        sampling.set()
        sampler.join(10)
    for (messages, calls), (later_messages, later_calls) in itertools.pairwise(samples):
        assert later_messages >= messages and later_calls >= calls, samples


def test_ctrl_c_to_the_whole_group_drains_each_worker_once(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A terminal sends SIGINT to every process of its foreground group: the workers are in
    a group of their own, so each gets the supervisor's forward only, and drains (a second
    signal would stop it at once, dropping the call in progress)."""
    server = start_server(
        server_extra="workers = 2",
        extra_config=answer_plan("unsecured", answer_after=0, answer_hangup_after=1.0),
        new_session=True,
    )
    server.wait_for("server_ready")
    scenario = call_uac_answered_then_hung_up(tmp_path / "hung_up.xml")
    caller = subprocess.Popen(
        sipp_caller_command(scenario, server.sip_port, "5000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    answered = server.wait_for("call_answered", timeout=15)
    os.killpg(server.process.pid, signal.SIGINT)
    out, _ = caller.communicate(timeout=60)
    assert caller.returncode == 0, out[-3000:]  # the call in progress ended well
    assert server.process.wait(30) == 0
    drained = server.wait_count("server_drained", 2)
    assert {line["worker"] for line in drained} == {0, 1}
    assert server.events("server_stopping_now") == []
    ended = server.wait_for("answered_call_ended", worker=answered["worker"])
    assert ended["ended_by"] == "hangup_timer"


def test_workers_whose_supervisor_is_killed_drain_and_exit(start_server: StartServer) -> None:
    server = start_server(server_extra="workers = 2")
    server.wait_for("server_ready")
    # Handles on the workers themselves (init adopts them: we cannot wait on them otherwise).
    handles = [os.pidfd_open(worker_pid(server.process.pid, index)) for index in (0, 1)]
    server.process.send_signal(signal.SIGKILL)
    gone = server.wait_count("supervisor_gone", 2, timeout=15)
    assert {line["worker"] for line in gone} == {0, 1}
    stopped = server.wait_count("server_stopped", 2, timeout=15)
    assert {line["worker"] for line in stopped} == {0, 1}
    for handle in handles:  # readable once the process has exited
        exited, _, _ = select.select([handle], [], [], 10)
        os.close(handle)
        assert exited, "a worker still runs after its supervisor was killed"


def test_call_limits_hold_across_workers_and_forget_a_worker_that_dies(
    start_server: StartServer, tmp_path: Path
) -> None:
    """gw1 may have 2 calls in progress: two ringing on worker 0 (sent to its own port)
    leave none to worker 1, whose refusal counts both; when worker 0 is killed, the
    supervisor removes its counts at once and worker 1 admits calls again."""
    server = start_server(
        server_extra="workers = 2\n",
        extra_config=answer_plan("unsecured", answer_after=30.0),
    )
    server.wait_for("server_ready")
    config = server.workdir / "sipserver.toml"
    config.write_text(
        config.read_text().replace('name = "gw1"\n', 'name = "gw1"\nmax_calls = 2\n', 1)
    )
    server.process.send_signal(signal.SIGHUP)
    for index in (0, 1):
        server.wait_for("config_reloaded", worker=index)
        server.wait_for("call_counts_shared", worker=index)
    own = {
        e["worker"]: e["port"]
        for e in server.events("listener_started")
        if e.get("own") and e["transport"] == "udp" and e["address"] == "127.0.0.1"
    }
    ringing = subprocess.Popen(  # rings for 30 s: killed with worker 0 below
        sipp_caller_command(call_uac(tmp_path / "uac.xml"), own[0], "5000", calls=2, rate=100),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        server.wait_for("call_counts_elsewhere", worker=1, active=2, timeout=15)
        refused = udp_exchange(
            "127.0.0.1",
            own[1],
            options("127.0.0.1", own[1], method="INVITE", uri="sip:5001@sip.example.test"),
        )
        assert refused.startswith(b"SIP/2.0 503"), refused
        assert b"Peer gw1 has 2 calls in progress, its max_calls (2)" in refused
        os.kill(worker_pid(server.process.pid, 0), signal.SIGKILL)
        server.wait_for("worker_exited", worker_index=0, timeout=15)
        # (worker 1 said active=0 once already, at its first exchange)
        server.wait_until(
            lambda _: (
                len(
                    [
                        e
                        for e in server.events("call_counts_elsewhere")
                        if e["worker"] == 1 and e["active"] == 0
                    ]
                )
                == 2
            ),
            15,
            "worker 1 learns that worker 0's calls are gone",
        )
        answered = udp_exchange(
            "127.0.0.1",
            own[1],
            options("127.0.0.1", own[1], method="INVITE", uri="sip:5002@sip.example.test"),
        )
        assert answered.startswith(b"SIP/2.0 1"), answered  # admitted: 100 Trying / ringing
    finally:
        ringing.kill()
        ringing.wait(10)
