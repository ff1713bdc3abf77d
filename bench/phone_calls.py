#!/usr/bin/env python3
"""Calls to a registered softphone with one worker and with two: what the sibling hop costs.

A phone (a small Python TLS client in a process of its own, with its own certificate)
registers over mutual TLS and answers every call (200, then 200 to the BYE). sipp gateways
call its number over UDP (several sockets, so the kernel spreads them over the workers)
at increasing rates for --seconds per step. With two workers about half the calls land on
the worker that does not hold the phone's flow and are handed over (mutual TLS between
the workers). Prints per step: calls answered and failed, setup p50/p99 (sipp, whole ms),
the server's CPU ms per call (all its processes), and how many calls were handed over;
"best" is the highest clean rate (0 failed, achieved within 10 %, p99 < --max-p99 ms).
Also the TLS session resumption share of a reconnecting peer (`--resume N` reconnections,
one worker vs two): each worker keeps its own session cache.

    python bench/phone_calls.py [--seconds 5] [--rates 100,200,300] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import cpu_seconds_tree, free_port, rtt_percentiles, sipp_counts, start_server

from tests.certs import Issued, make_ca, make_leaf
from tests.e2e.sipp_scenarios import call_uac

FQDN = "sip.example.test"
CALLERS = 4  # sipp processes (UDP sockets) per step

PHONE = r"""
import socket, ssl, sys, uuid
host, port, cert, key, ca, fqdn = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
sock = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=fqdn)
local = sock.getsockname()[1]
def send(text):
    sock.sendall(text.replace("\n", "\r\n").encode())
send(f"REGISTER sip:{fqdn} SIP/2.0\nVia: SIP/2.0/TLS 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\n"
     f"From: <sip:7001@{fqdn}>;tag=r\nTo: <sip:7001@{fqdn}>\nCall-ID: {uuid.uuid4().hex}\nCSeq: 1 REGISTER\n"
     f"Max-Forwards: 70\nContact: <sip:7001@127.0.0.1:{local};transport=tls;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-00000000c0de>\";reg-id=1\n"
     f"Supported: outbound\nExpires: 3600\nContent-Length: 0\n\n")
buffer = b""
keep = (b"via", b"from", b"call-id", b"cseq", b"record-route", b"v", b"f", b"i")
def reply(head, status):
    lines = head.split(b"\r\n")[1:]
    out = [l for l in lines if l.split(b":", 1)[0].strip().lower() in keep]
    to = next(l for l in lines if l.split(b":", 1)[0].strip().lower() in (b"to", b"t"))
    if b";tag=" not in to:
        to += b";tag=ph"
    sock.sendall(b"SIP/2.0 " + status + b"\r\n" + b"\r\n".join(out + [to]) +
                 b"\r\nContact: <sip:7001@127.0.0.1:%d;transport=tls>\r\nContent-Length: 0\r\n\r\n" % local)
registered = False
while True:
    data = sock.recv(65536)
    if not data:
        break
    buffer += data
    while True:
        buffer = buffer.lstrip(b"\r\n")
        head, found, rest = buffer.partition(b"\r\n\r\n")
        if not found:
            break
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value)
        if len(rest) < length:
            break
        buffer = rest[length:]
        if head.startswith(b"SIP/2.0 200") and not registered:
            registered = True
            print("registered", flush=True)
        elif head.startswith(b"INVITE "):
            reply(head, b"200 OK")
        elif head.startswith(b"BYE "):
            reply(head, b"200 OK")
"""


def write_setup(work: Path, workers: int) -> tuple[Path, Issued, Issued]:
    ca = make_ca("phone bench CA")
    server = make_leaf(ca, dns=[FQDN])
    phone = make_leaf(ca, dns=["phone1.example.test"])
    server.write_pair(work / "server", "sip")
    (work / "trust").mkdir(exist_ok=True)
    (work / "trust" / "ca.crt").write_bytes(ca.cert_pem)
    config = work / "bench.toml"
    config.write_text(
        f'[server]\nfqdn = "{FQDN}"\naddresses = ["127.0.0.1"]\nsip_port = 0\ntls_port = 0\n'
        f"workers = {workers}\nwatch_interval = 0\n"
        '[tls]\ncertificate_dir = "server"\ntrust_dir = "trust"\n'
        '[[peer]]\nname = "gw1"\nfqdn = "gw1.example.test"\naddresses = ["127.0.0.1"]\n'
        '[[peer]]\nname = "phone1"\nfqdn = "phone1.example.test"\nkind = "softphone"\n'
        'numbers = ["7001"]\nhealth_check = 0\n'
        '[[dial_plan]]\nname = "phones"\nsecurity = "unsecured"\nnumbers = ["70xx"]\n'
        'from = ["gw1"]\ntargets = ["phone1"]\n'
    )
    return config, ca, phone


@contextlib.contextmanager
def running_phone(work: Path, tls_port: int, ca: Issued, phone: Issued) -> Iterator[int]:
    cert, key = phone.write_pair(work / "phone", "phone1")
    script = work / "phone.py"
    script.write_text(PHONE)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "127.0.0.1",
            str(tls_port),
            str(cert),
            str(key),
            str(work / "trust" / "ca.crt"),
            FQDN,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "registered":
        raise SystemExit("the phone could not register")
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def handed_over(log: Path) -> tuple[int, int]:
    """(calls routed, calls handed over) in the server log so far."""
    routed = handed = 0
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "call_routed" and event.get("peer") == "gw1":
                routed += 1
                handed += event.get("target") == "sipserver-sibling"
    return routed, handed


def worker_ports(log: Path) -> tuple[int | None, dict[int, int]]:
    """(the worker holding the phone's flow, each worker's own UDP port) from the log."""
    holder: int | None = None
    own: dict[int, int] = {}
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "registration_added":
                holder = event.get("worker")
            if (event.get("event"), event.get("own"), event.get("transport")) == (
                "listener_started",
                True,
                "udp",
            ):
                own[event["worker"]] = event["port"]
    return holder, own


def step(work: Path, sip_port: int, server_pid: int, rate: int, seconds: float) -> dict[str, float]:
    uac = call_uac(work / "uac.xml")
    each = max(1, round(rate * seconds / CALLERS))
    started_cpu = cpu_seconds_tree(server_pid)
    started = time.monotonic()
    callers = []
    for _ in range(CALLERS):
        callers.append(
            subprocess.Popen(
                [
                    "sipp",
                    "-sf",
                    str(uac),
                    "-t",
                    "u1",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(free_port()),
                    "-s",
                    "7001",
                    "-m",
                    str(each),
                    "-r",
                    str(max(1, rate // CALLERS)),
                    "-l",
                    str(rate * 10),
                    "-timeout",
                    f"{seconds * 4 + 15}s",
                    "-timeout_error",
                    "-nostdin",
                    "-trace_rtt",
                    "-rtt_freq",
                    "1",
                    f"127.0.0.1:{sip_port}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=work,
            )
        )
    ok = failed = 0
    for caller in callers:
        out, _ = caller.communicate(timeout=seconds * 4 + 60)
        good, bad = sipp_counts(out, each)
        ok, failed = ok + good, failed + bad
    elapsed = time.monotonic() - started
    cpu = cpu_seconds_tree(server_pid) - started_cpu
    rtts = rtt_percentiles(sorted(work.glob("*_rtt.csv")))
    for path in work.glob("*_rtt.csv"):
        path.unlink()
    return {
        "ok": ok,
        "failed": failed,
        "achieved": ok / elapsed,
        "cpu_ms": cpu * 1000 / max(ok, 1),
        **rtts,
    }


def resumed_share(tls_port: int, ca: Issued, phone: Issued, work: Path, count: int) -> float:
    """A peer reconnecting `count` times, offering its last session each time."""
    cert, key = phone.write_pair(work / "resume", "peer")
    context = ssl.create_default_context(cafile=str(work / "trust" / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # a session per handshake, no tickets
    session, resumed = None, 0
    for _ in range(count):
        with (
            socket.create_connection(("127.0.0.1", tls_port)) as raw,
            context.wrap_socket(raw, server_hostname=FQDN, session=session) as tls,
        ):
            resumed += bool(tls.session_reused)
            session = tls.session
    return resumed / count


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="100,200,300")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--max-p99", type=float, default=200.0)
    parser.add_argument("--resume", type=int, default=200, help="reconnections for the share")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="sipserver-phone-bench-") as tmp:
            work = Path(tmp)
            config, ca, phone = write_setup(work, workers)
            log = work / "server.log"
            proc, ports = start_server(config, log)
            try:
                share = resumed_share(ports["tls"], ca, phone, work, args.resume)
                print(f"workers={workers} TLS sessions resumed: {share:.0%} of {args.resume}")
                best = None
                with running_phone(work, ports["tls"], ca, phone):
                    deadline = time.monotonic() + 10
                    holder, own = worker_ports(log)
                    while holder is None and time.monotonic() < deadline:
                        time.sleep(0.1)  # the log reaches its file from a reader thread
                        holder, own = worker_ports(log)
                    # Through the shared port (the kernel splits the callers' sockets), and
                    # with two workers also straight to each one's own port: all calls on the
                    # worker holding the flow, then all handed over, in the same run.
                    targets = [("shared", ports["udp"])]
                    if workers > 1 and holder is not None:
                        other = next(w for w in own if w != holder)
                        targets += [("holder", own[holder]), ("other", own[other])]
                    for rate in rates:
                        for name, port in targets:
                            routed_before, handed_before = handed_over(log)
                            result = step(work, port, proc.pid, rate, args.seconds)
                            routed, handed = handed_over(log)
                            share = (handed - handed_before) / max(routed - routed_before, 1)
                            clean = (
                                result["failed"] == 0
                                and result["achieved"] >= rate * 0.9
                                and result.get("p99", 0) < args.max_p99
                            )
                            if name == "shared" and clean:
                                best = rate
                            print(
                                f"workers={workers} via={name} rate={rate}/s ok={result['ok']:.0f} "
                                f"failed={result['failed']:.0f} "
                                f"achieved={result['achieved']:.0f}/s "
                                f"setup p50={result.get('p50', 0):.0f} "
                                f"p99={result.get('p99', 0):.0f} ms "
                                f"cpu={result['cpu_ms']:.2f} ms/call handed_over={share:.0%}",
                                flush=True,
                            )
                print(f"workers={workers} best clean rate: {best}")
            finally:
                proc.terminate()
                proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
