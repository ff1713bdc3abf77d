#!/usr/bin/env python3
"""Proxied call throughput: sipp caller -> sipserver -> sipp callee.

For UDP, TCP, TLS (stunnel with client certificates on both legs, as in the e2e tests),
mtls-new (as mtls-tcp, but a new TCP connection per call, so a new mutual-TLS handshake:
resumed, as stunnel offers its last session), mtls-full (as mtls-new, but stunnel never
resumes: a full handshake with both certificates per call),
tcp-new (plain TCP, a new connection per call: load that SO_REUSEPORT spreads over workers)
and mtls-tcp (the caller over one persistent mutual-TLS connection through stunnel, the
callee over plain TCP: the scenario compared with Kamailio) it places calls (INVITE/100/180/200/ACK/BYE/200 through the proxy) at increasing rates for
--seconds per step and prints answered and failed calls, setup-time percentiles (INVITE
sent to 200 received, as sipp measures it, whole milliseconds) and the server's CPU
milliseconds per answered call (from /proc/PID/task/*/schedstat). "best" is the highest rate
with zero failed calls, the achieved rate within 10% of the target and p99 setup under
--max-p99 ms. Bounded: len(rates) steps per transport.

    python bench/call_rate.py [--seconds 5] [--rates 25,50,100,150,200]

`--instructions` runs the server under valgrind's callgrind, with counting switched on for
the step alone, and adds the instructions the whole server (trio, OpenSSL, logging, the
core) spent per answered call: a figure that does not move with the VM's noise, so a 1 %
change in the shell shows. The server is ~50 times slower there: use low rates
(`--rates 5 --seconds 20`), where each message is a wake-up of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    free_port,
    kernel_seconds_tree,
    peers_and_plan,
    percentiles,
    perf_record,
    perf_summary,
    process_tree,
    profile,
    profile_summary,
    rtt_percentiles,
    run_stats_tree,
    sipp_counts,
    start_server,
    stunnel,
    thread_ids,
)

from tests.certs import Issued, make_ca, make_leaf
from tests.e2e.sipp_scenarios import call_uac, call_uas

SERVER_LOG: Path | None = None  # --server-log: keep the server's JSON log there
SHED_OK = False  # --overload: a 503 with Retry-After (load shed) ends a call well
PROFILE: Path | None = None  # --profile: py-spy the server during each step into this folder
PERF: Path | None = None  # --perf: perf record the proxy's processes during each step, here
PROXY = "sipserver"  # --proxy
WORKERS = 1  # --workers: server.workers
MUTUAL_TLS = ("mtls-tcp", "mtls-new", "mtls-full")  # the caller through stunnel, callee on TCP
NEW_CONNECTION_PER_CALL = ("mtls-new", "mtls-full", "tcp-new")
TLS_CALLER = "stunnel"  # --tls-caller: who places mutual-TLS calls
CAPTURE = False  # --capture: [capture] hep to a UDP socket here (bound, never read)
ADMISSION = False  # --admission: every call-admission limit set, none ever reached
# --kamailio-memory: Kamailio's memory manager for both its shared and private memory. f_malloc
# (fm), as in the harness; Debian's default, qm_malloc, is the debugging allocator and
# took 45 % of Kamailio's CPU here (perf at 300/s), 0.62-0.72 ms a call against 0.25-0.44.
KAMAILIO_MEMORY = "fm"
INSTRUCTIONS: Path | None = None  # --instructions: the folder of callgrind's counts
_SINKS: list[socket.socket] = []
C_CALLER_SOURCE = Path(__file__).parent / "tls_caller.c"


def _own_caller(transport: str) -> bool:
    """Whether this transport's calls come from tls_caller.py/.c rather than sipp + stunnel
    (the Python caller only opens a connection per call; the C one also keeps one)."""
    if TLS_CALLER == "c":
        return transport in MUTUAL_TLS
    return TLS_CALLER == "python" and transport in ("mtls-new", "mtls-full")


def build_c_caller() -> Path:
    """bench/tls_caller.c compiled once per source version (needs gcc and libgnutls28-dev)."""
    digest = hashlib.sha256(C_CALLER_SOURCE.read_bytes()).hexdigest()[:12]
    binary = Path(tempfile.gettempdir()) / f"sipserver-tls-caller-{digest}"
    if not binary.exists():
        subprocess.run(
            ["cc", "-O2", "-o", str(binary), str(C_CALLER_SOURCE), "-lgnutls"],
            check=True,
        )
    return binary


def _write_pki(work: Path, ca: Issued) -> None:
    """The proxy's certificate (server/sip.crt + .key) and the CA it trusts (trust/ca.crt)."""
    make_leaf(ca, dns=["sip.example.test"]).write_pair(work / "server", "sip")
    (work / "trust").mkdir(exist_ok=True)
    (work / "trust" / "ca.crt").write_bytes(ca.cert_pem)


def start_bench_server(
    work: Path, ca: Issued, transport: str, target_port: int
) -> tuple[subprocess.Popen[bytes], int, int]:
    _write_pki(work, ca)
    security = "sip-secured" if transport == "tls" else "unsecured"
    target_transport = "tcp" if transport in (*MUTUAL_TLS, "tcp-new") else transport
    config = work / f"bench-{transport}.toml"
    config.write_text(
        '[server]\nfqdn = "sip.example.test"\naddresses = ["127.0.0.1"]\nsip_port = 0\ntls_port = 0\n'
        f"workers = {WORKERS}\n"
        '[tls]\ncertificate_dir = "server"\ntrust_dir = "trust"\n'
        + peers_and_plan(
            target_port,
            target_transport,
            security,
            "max_calls = 1000000\nmax_call_rate = 1000000.0\n" if ADMISSION else "",
        )
    )
    if ADMISSION:
        with config.open("a") as text:
            text.write("max_calls = 1000000\n[limits]\nmax_calls = 1000000\n")
    if CAPTURE:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        _SINKS.append(sink)
        with config.open("a") as text:
            text.write(f'[capture]\nhep = "udp:127.0.0.1:{sink.getsockname()[1]}"\n')
    under = None
    if INSTRUCTIONS is not None:
        under = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        under.append(f"--callgrind-out-file={INSTRUCTIONS}/callgrind.out.%p")
    proc, ports = start_server(config, SERVER_LOG, under)
    return proc, ports["udp"], ports["tls"]


def count_instructions(server_pid: int, on: bool) -> int:
    """Switch callgrind's counting on for a step (from zero), or dump and return the
    instructions counted since."""
    if on:
        for switch in (["-z"], ["-i", "on"]):
            subprocess.run(
                ["callgrind_control", *switch, str(server_pid)], check=True, capture_output=True
            )
        return 0
    assert INSTRUCTIONS is not None
    for old in INSTRUCTIONS.glob(f"callgrind.out.{server_pid}.*"):
        old.unlink()
    subprocess.run(["callgrind_control", "-d", str(server_pid)], check=True, capture_output=True)
    dumps = sorted(INSTRUCTIONS.glob(f"callgrind.out.{server_pid}.*"))
    totals = re.search(r"^(?:summary|totals): (\d+)", dumps[-1].read_text(), re.MULTILINE)
    assert totals is not None, f"no totals in {dumps[-1]}"
    return int(totals.group(1))


def start_kamailio(
    work: Path, ca: Issued, transport: str, target_port: int
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Kamailio in sipserver's place (--proxy kamailio), for the same calls side by side."""
    _write_pki(work, ca)
    (work / "tls.cfg").write_text(
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n"
        f"require_certificate = yes\ncertificate = {work / 'server' / 'sip.crt'}\n"
        f"private_key = {work / 'server' / 'sip.key'}\nca_list = {work / 'trust' / 'ca.crt'}\n"
        "[client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n"
        f"ca_list = {work / 'trust' / 'ca.crt'}\n"
    )
    sip_port, tls_port = free_port(), free_port()
    callee_transport = "udp" if transport == "udp" else "tls" if transport == "tls" else "tcp"
    config = (Path(__file__).parent / "kamailio.cfg").read_text()
    for name, value in (
        ("SIP_PORT", sip_port),
        ("TLS_PORT", tls_port),
        ("CALLEE", target_port),
        ("CALLEE_TRANSPORT", callee_transport),
        ("TLS_CFG", work / "tls.cfg"),
        ("UDP_RECEIVERS", 1 if transport == "udp" else 2),
    ):
        config = re.sub(rf'#!substdef "!{name}![^!]*!g"', f'#!substdef "!{name}!{value}!g"', config)
    (work / "kamailio.cfg").write_text(config)
    proc = subprocess.Popen(
        [
            *("kamailio", "-DD", "-E", "-f", str(work / "kamailio.cfg"), "-m", "256", "-M", "32"),
            *("-x", KAMAILIO_MEMORY, "-X", KAMAILIO_MEMORY),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", tls_port), 0.2):
            return proc, sip_port, tls_port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("kamailio did not start (kamailio -c -f bench/kamailio.cfg says why)")


def start_relay(
    work: Path, ca: Issued, transport: str, target_port: int, options: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int, int]:
    """bench/relay_floor.py in sipserver's place (--proxy relay): the same I/O, no SIP
    work, so its CPU per call is the floor under sipserver's (relay-plain: no trio
    either; relay-core: no trio, UDP through sipserver's core)."""
    _write_pki(work, ca)
    sip_port, tls_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, str(Path(__file__).parent / "relay_floor.py")),
            *("--sip-port", str(sip_port), "--tls-port", str(tls_port)),
            *("--callee-port", str(target_port)),
            *("--certificate", str(work / "server" / "sip.crt")),
            *("--key", str(work / "server" / "sip.key"), "--ca", str(work / "trust" / "ca.crt")),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError("relay_floor.py did not start")
    return proc, sip_port, tls_port


def _routed() -> int:
    if SERVER_LOG is None or not SERVER_LOG.exists():
        return 0
    return SERVER_LOG.read_text().count('"event":"call_routed"')


def step(
    work: Path,
    transport: str,
    caller_port: int,
    callee_port: int,
    rate: int,
    seconds: float,
    server_pid: int,
) -> dict[str, float]:
    calls = max(1, int(rate * seconds))
    sipp_t = "u1" if transport == "udp" else "t1"  # t1: one TCP connection each way
    # tn: a TCP connection (so, through stunnel, a new mutual-TLS handshake) per call
    caller_t = "tn" if transport in NEW_CONNECTION_PER_CALL else sipp_t
    uac = call_uac(work / "uac.xml", shed_retry_after=5 if SHED_OK else None)
    uas = call_uas(work / "uas.xml")
    for old in work.glob("uac_*_rtt.csv"):
        old.unlink()
    callee = subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(uas),
            "-t",
            sipp_t,
            "-i",
            "127.0.0.1",
            "-p",
            str(callee_port),
            "-m",
            str(calls),
            "-timeout",
            f"{seconds * 4 + 20}s",
            "-nostdin",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=work,
    )
    if INSTRUCTIONS is not None:
        count_instructions(server_pid, on=True)
    started = time.monotonic()
    routed_before = _routed()
    cpu_before, slices_before = run_stats_tree(server_pid)
    kernel_before = kernel_seconds_tree(server_pid)
    raw = PROFILE / f"{transport}-{rate}.txt" if PROFILE else None
    spy = profile(server_pid, seconds, raw) if raw else None
    native = PERF / f"{transport}-{rate}.data" if PERF else None
    # sipserver's processes with whole stacks (what the core costs with what it calls);
    # Kamailio's by sampling every CPU (see perf_record).
    pids = process_tree(server_pid) if PROXY == "sipserver" else None
    perf = perf_record(seconds, native, pids) if native else None
    if _own_caller(transport):
        own = _own_caller_step(
            work,
            transport,
            caller_port,
            rate,
            calls,
            server_pid,
            started,
            cpu_before,
            slices_before,
            kernel_before,
            callee,
        )
        _print_profile(spy, raw, transport, rate)
        _print_perf(perf, native, thread_ids(process_tree(server_pid)), transport, rate)
        return own
    result = subprocess.run(
        [
            "sipp",
            "-sf",
            str(uac),
            "-t",
            caller_t,
            "-max_socket",  # tn opens a socket per call; sipp's default exceeds the fd limit
            "4096",
            "-i",
            "127.0.0.1",
            "-s",
            "5000",
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-l",
            str(rate * 10),
            "-timeout",
            f"{seconds * 4 + 15}s",
            "-timeout_error",
            "-nostdin",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            f"127.0.0.1:{caller_port}",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=seconds * 6 + 60,
    )
    elapsed = time.monotonic() - started
    cpu_after, slices_after = run_stats_tree(server_pid)
    cpu, wakeups = cpu_after - cpu_before, slices_after - slices_before
    kernel = kernel_seconds_tree(server_pid) - kernel_before
    instructions = count_instructions(server_pid, on=False) if INSTRUCTIONS is not None else 0
    _print_profile(spy, raw, transport, rate)
    _print_perf(perf, native, thread_ids(process_tree(server_pid)), transport, rate)
    callee.kill()
    callee.wait(10)
    answered, failed = sipp_counts(result.stdout, calls)
    shed = 0
    if SHED_OK:  # sipp's successes include the shed calls: the server says which were routed
        time.sleep(1)
        routed = _routed() - routed_before
        shed, answered = answered - routed, routed
    return {
        "ok": answered,
        "shed": shed,
        "failed": failed,
        "achieved": answered / elapsed,
        "cpu_ms_per_call": cpu * 1000 / answered if answered else float("nan"),
        "wakeups_per_call": wakeups / answered if answered else float("nan"),
        "kernel_share": kernel / cpu if cpu else float("nan"),
        **(
            {"instructions_per_call": instructions // answered} if instructions and answered else {}
        ),
        **rtt_percentiles(list(work.glob("uac_*_rtt.csv"))),
        # --overload: INVITE -> 503 of the shed calls (sipp's second response-time timer)
        **{
            f"shed_{key}": value
            for key, value in rtt_percentiles(list(work.glob("uac_*_rtt.csv")), rtd="2").items()
        },
    }


def _print_profile(
    spy: subprocess.Popen[bytes] | None, raw: Path | None, transport: str, rate: int
) -> None:
    if spy is not None and raw is not None:
        spy.wait(30)
        if raw.exists():
            print(f"profile of {transport} at {rate}/s ({raw}):\n{profile_summary(raw)}")


def _print_perf(
    perf: subprocess.Popen[bytes] | None,
    data: Path | None,
    threads: set[int],
    transport: str,
    rate: int,
) -> None:
    if perf is not None and data is not None:
        perf.wait(60)
        if data.exists():
            summary = perf_summary(data, threads, sipserver=PROXY == "sipserver")
            print(f"perf of {transport} at {rate}/s ({data}):\n{summary}")


def _own_caller_step(
    work: Path,
    transport: str,
    tls_port: int,
    rate: int,
    calls: int,
    server_pid: int,
    started: float,
    cpu_before: float,
    slices_before: int,
    kernel_before: float,
    callee: subprocess.Popen[bytes],
) -> dict[str, float]:
    """The step's calls placed by bench/tls_caller.py (or .c) straight to the TLS port."""
    rtt, shed_rtt = work / "caller-setup.txt", work / "caller-shed.txt"
    shed_rtt.write_text("")
    if TLS_CALLER == "c":
        command = [str(build_c_caller()), "--shed-file", str(shed_rtt)]
    else:
        command = [sys.executable, str(Path(__file__).parent / "tls_caller.py")]
    command += [
        *("--port", str(tls_port), "--cert", str(work / "gw.pem")),
        *("--ca", str(work / "trust" / "ca.crt"), "--rate", str(rate), "--calls", str(calls)),
        *("--rtt-file", str(rtt)),
        *(["--resume"] if transport == "mtls-new" else []),
        *(["--persistent"] if transport == "mtls-tcp" else []),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=calls / rate * 4 + 60)
    elapsed = time.monotonic() - started
    cpu_after, slices_after = run_stats_tree(server_pid)
    cpu, wakeups = cpu_after - cpu_before, slices_after - slices_before
    kernel = kernel_seconds_tree(server_pid) - kernel_before
    callee.kill()
    callee.wait(10)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  (tls_caller.{'c' if TLS_CALLER == 'c' else 'py'}: "
        f"{summary['cpu_ms_per_call']:.2f} ms CPU per call"
        + (f"; failures: {summary['failures']}" if summary["failures"] else "")
        + ")",
        flush=True,
    )
    if SERVER_LOG is not None:  # each failed call by Call-ID, to look up in the server's log
        for line in out.stderr.splitlines()[:20]:
            print(f"    {line}", flush=True)
    answered, shed = summary["answered"], summary.get("shed", 0)
    shed_times = percentiles(float(line.split()[-1]) for line in shed_rtt.read_text().splitlines())
    return {
        "ok": answered,
        "shed": shed,
        # without --overload a 503 is a failed call, as it is for sipp
        "failed": summary["failed"] + (0 if SHED_OK else shed),
        "achieved": answered / elapsed,
        "cpu_ms_per_call": cpu * 1000 / answered if answered else float("nan"),
        "wakeups_per_call": wakeups / answered if answered else float("nan"),
        "kernel_share": kernel / cpu if cpu else float("nan"),
        **percentiles(float(line) for line in rtt.read_text().split()),
        **{f"shed_{key}": value for key, value in shed_times.items()},
    }


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a server drains what it admitted, up to shutdown_grace), then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(45)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="25,50,100,150,200,300")
    parser.add_argument("--transports", default="udp,tcp,tls")
    parser.add_argument("--max-p99", type=float, default=200.0)
    parser.add_argument("--server-log", type=Path, help="append the server's JSON log to this file")
    parser.add_argument(
        "--proxy",
        choices=("sipserver", "kamailio", "relay", "relay-plain", "relay-core"),
        default="sipserver",
        help="the proxy under test: kamailio runs bench/kamailio.cfg in its place, same calls;"
        " relay runs bench/relay_floor.py (sipserver's I/O with no SIP work: the floor), "
        "relay-plain the same relay on a bare epoll loop without trio, relay-core that loop "
        "with sipserver's core handling each datagram (udp only)",
    )
    parser.add_argument(
        "--kamailio-memory",
        choices=("fm", "qm", "tlsf"),
        default="fm",
        help="Kamailio's memory manager (-x/-X): fm (f_malloc, the default here), qm "
        "(Debian's default, a debugging allocator) or tlsf",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the server with py-spy during each step (raw stacks in this folder) "
        "and print where its time goes",
    )
    parser.add_argument(
        "--perf",
        type=Path,
        help="sample the proxy's processes with perf during each step (perf.data files in "
        "this folder) and print the shares of the kernel, the interpreter, the compiled "
        "core and the libraries (native frames, for Kamailio as for sipserver); for "
        "sipserver also each part's share with what it calls (whole stacks, from DWARF)",
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help="count a 503 + Retry-After (the server shedding load) as a well-ended call; "
        "answered calls are then the server's call_routed lines",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server.workers: processes sharing the ports"
    )
    parser.add_argument(
        "--tls-caller",
        choices=("stunnel", "python", "c"),
        default="stunnel",
        help="mutual-TLS calls from sipp through stunnel, from bench/tls_caller.py "
        "(mtls-new/mtls-full: a TLS client per call at a fraction of stunnel's CPU) or from "
        "bench/tls_caller.c (all three, a fraction of the Python caller's CPU; gcc, libgnutls28-dev)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="mirror every message as HEP to a local UDP socket ([capture] hep), to measure "
        "what capture costs",
    )
    parser.add_argument(
        "--admission",
        action="store_true",
        help="set every call-admission limit (peer max_calls and max_call_rate, the plan's and"
        " the server's max_calls) so high none is reached, to measure what counting costs",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="add each step's figures to this JSON file (a list; bench/plot.py draws it)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every rate, also past the first step that is not clean (for the plots)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="run the server under callgrind and print the instructions per answered call "
        "(apt-get install valgrind; use low rates, e.g. --rates 5 --seconds 20)",
    )
    args = parser.parse_args()
    global SERVER_LOG, SHED_OK, PROFILE, PERF, WORKERS, TLS_CALLER, CAPTURE, ADMISSION
    global INSTRUCTIONS, KAMAILIO_MEMORY, PROXY
    if args.proxy == "relay-core" and args.transports != "udp":
        print("relay-core puts the core on UDP only: --transports udp", file=sys.stderr)
        return 2
    if args.instructions:
        if args.proxy != "sipserver" or args.workers != 1 or args.tls_caller != "stunnel":
            print("--instructions counts one sipserver process called by sipp", file=sys.stderr)
            return 2
        INSTRUCTIONS = Path(tempfile.mkdtemp(prefix="callgrind-"))
    CAPTURE = args.capture
    ADMISSION = args.admission
    WORKERS = args.workers
    TLS_CALLER = args.tls_caller
    SHED_OK = args.overload
    KAMAILIO_MEMORY = args.kamailio_memory
    PROXY = args.proxy
    PROFILE = args.profile
    if PROFILE:
        PROFILE.mkdir(parents=True, exist_ok=True)
    PERF = args.perf
    if PERF:
        PERF.mkdir(parents=True, exist_ok=True)
    SERVER_LOG = args.server_log or (Path(tempfile.mkdtemp()) / "server.log" if SHED_OK else None)
    for tool in ("sipp", "stunnel4"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install sip-tester stunnel4)", file=sys.stderr)
            return 2
    rates = [int(r) for r in args.rates.split(",")]
    print(
        f"calls proxied by {args.proxy}, {args.seconds:g} s per step; "
        "setup time (INVITE -> 200) in ms; cpu ms = the proxy's CPU (all its processes) per call; "
        "wake = the times its threads were put on a CPU, per call; sys = the kernel's share of cpu"
    )
    print(
        f"{'transport':<9} {'rate':>5} {'answered':>9} {'shed':>5} {'failed':>7} {'calls/s':>8} {'mean':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'cpu ms':>7} {'wake':>6} {'sys':>4}"
    )
    ca = make_ca("bench CA")
    for transport in args.transports.split(","):
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            callee_port = free_port()
            target_port = callee_port
            if transport == "tls":
                pbx = make_leaf(ca, dns=["pbx1.example.test"])
                pbx.write_combined(work / "pbx.pem")
                (work / "trust").mkdir(exist_ok=True)
                (work / "trust" / "ca.crt").write_bytes(ca.cert_pem)
                target_port = free_port()
                stack.enter_context(
                    stunnel(
                        work,
                        f"[pbx]\naccept = 127.0.0.1:{target_port}\nconnect = 127.0.0.1:{callee_port}\n"
                        f"cert = {work / 'pbx.pem'}\nCAfile = {work / 'trust' / 'ca.crt'}\n"
                        "verifyChain = yes\nrequireCert = yes\n",
                    )
                )
            starters: dict[
                str, Callable[[Path, Issued, str, int], tuple[subprocess.Popen[bytes], int, int]]
            ] = {
                "kamailio": start_kamailio,
                "relay": start_relay,
                "relay-plain": functools.partial(start_relay, options=("--io", "plain")),
                "relay-core": functools.partial(start_relay, options=("--io", "plain", "--core")),
                "sipserver": start_bench_server,
            }
            proc, sip_port, tls_port = starters[args.proxy](work, ca, transport, target_port)
            stack.callback(stop_process, proc)
            caller_port = sip_port
            if transport in ("tls", *MUTUAL_TLS):
                gw = make_leaf(ca, dns=["gw1.example.test"])
                gw.write_combined(work / "gw.pem")
                caller_port = free_port()
                if _own_caller(transport):
                    caller_port = tls_port  # tls_caller.py/.c speaks TLS itself
                else:
                    stack.enter_context(
                        stunnel(
                            work,
                            f"[gw]\nclient = yes\naccept = 127.0.0.1:{caller_port}\n"
                            f"connect = 127.0.0.1:{tls_port}\ncert = {work / 'gw.pem'}\n"
                            f"CAfile = {work / 'trust' / 'ca.crt'}\nverifyChain = yes\n"
                            + ("sessionResume = no\n" if transport == "mtls-full" else ""),
                        )
                    )
            best = None
            for rate in rates:
                result = step(
                    work, transport, caller_port, callee_port, rate, args.seconds, proc.pid
                )
                print(
                    f"{transport:<9} {rate:>5} {result['ok']:>9} {result['shed']:>5} {result['failed']:>7} "
                    f"{result['achieved']:>8.1f} {result['mean']:>7.1f} "
                    f"{result['p50']:>7.1f} {result['p90']:>7.1f} {result['p99']:>7.1f} "
                    f"{result['cpu_ms_per_call']:>7.2f} {result['wakeups_per_call']:>6.1f} {result['kernel_share']:>4.0%}"
                    + (
                        f"  503 p99 {result['shed_p99']:.0f} ms, max {result['shed_max']:.0f}"
                        if result["shed"]
                        else ""
                    )
                    + (
                        f"  {result['instructions_per_call']:,} instructions per call"
                        if "instructions_per_call" in result
                        else ""
                    ),
                    flush=True,
                )
                clean = not (
                    result["failed"]
                    or result["achieved"] < rate * 0.9
                    or result["p99"] > args.max_p99
                )
                if args.json is not None:
                    save_step(args, transport, rate, result, clean)
                if not clean:
                    if args.keep_going:
                        continue
                    break
                best = (rate, result)
            if best:
                print(
                    f"best {transport}: {best[0]} calls/s with 0 failures "
                    f"(setup mean {best[1]['mean']:.1f} ms, p50 {best[1]['p50']:.0f} ms, "
                    f"p99 {best[1]['p99']:.0f} ms, "
                    f"{best[1]['cpu_ms_per_call']:.2f} ms CPU per call)",
                    flush=True,
                )
            else:
                print(f"best {transport}: below {rates[0]} calls/s", flush=True)
    return 0


def save_step(
    args: argparse.Namespace, transport: str, rate: int, result: dict[str, Any], clean: bool
) -> None:
    """One step's figures, with what produced them, added to the --json file."""
    steps = json.loads(args.json.read_text()) if args.json.exists() else []
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    steps.append(
        {
            "proxy": args.proxy,
            "transport": transport,
            "workers": args.workers,
            "tls_caller": args.tls_caller,
            "rate": rate,
            "seconds": args.seconds,
            "clean": clean,
            "commit": commit,
            "date": time.strftime("%Y-%m-%d"),
            **{key: value for key, value in result.items() if isinstance(value, int | float)},
        }
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(steps, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
