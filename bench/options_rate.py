#!/usr/bin/env python3
"""OPTIONS throughput of one sipserver process, measured with sipp.

Starts the server on loopback with free ports, then for each transport (UDP, TCP, and
TLS through stunnel with a client certificate) drives sipp at increasing rates for a
fixed number of seconds per step, and prints, per step, the answered count, failures and
round-trip percentiles (sipp measures in whole milliseconds). The "best" line per
transport is the highest rate with zero failures, an achieved rate within 10% of the
target (sipp start-up included) and a p99 round trip under --max-p99 ms, i.e. before the
server starts queueing. Bounded: at most len(rates) steps of --seconds each per transport.

    python bench/options_rate.py [--seconds 3] [--rates 500,1000,2000,4000]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, rtt_percentiles, sipp_counts, start_server, stunnel

from tests.certs import make_ca, make_leaf

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options rtt">
  <send retrans="500"><![CDATA[

      OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]b[call_number]
      To: <sip:[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200" rtd="true"/>
</scenario>
"""


def start_bench_server(
    work: Path, ca_pem: bytes, server_pair: tuple[bytes, bytes]
) -> tuple[subprocess.Popen[bytes], int, int]:
    (work / "server").mkdir()
    (work / "trust").mkdir()
    (work / "server" / "sip.crt").write_bytes(server_pair[0])
    (work / "server" / "sip.key").write_bytes(server_pair[1])
    (work / "trust" / "ca.crt").write_bytes(ca_pem)
    config = work / "bench.toml"
    config.write_text(
        '[server]\nfqdn = "sip.example.test"\naddresses = ["127.0.0.1"]\nsip_port = 0\ntls_port = 0\n'
        '[tls]\ncertificate_dir = "server"\ntrust_dir = "trust"\n'
        '[[peer]]\nname = "bench"\nfqdn = "gw1.example.test"\naddresses = ["127.0.0.1"]\n'
    )
    proc, ports = start_server(config)
    return proc, ports["udp"], ports["tls"]


def run_step(transport: str, port: int, rate: int, seconds: float, work: Path) -> dict[str, float]:
    scenario = work / "options.xml"
    scenario.write_text(SCENARIO)
    calls = int(rate * seconds)
    for old in work.glob("options_*_rtt.csv"):
        old.unlink()
    started = time.monotonic()
    result = subprocess.run(
        [
            "sipp",
            "-sf",
            str(scenario),
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-l",
            str(max(rate, 1000)),
            "-timeout",
            f"{seconds * 4 + 10}s",
            "-timeout_error",
            "-nostdin",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-trace_stat",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=seconds * 6 + 30,
    )
    elapsed = time.monotonic() - started
    ok, failed = sipp_counts(result.stdout, calls)
    return {
        "rate": rate,
        "ok": ok,
        "failed": failed,
        "achieved": ok / elapsed,
        **rtt_percentiles(list(work.glob("options_*_rtt.csv"))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rates", default="500,1000,2000,3000,4000,6000")
    parser.add_argument(
        "--transports", default="tcp,tls,udp"
    )  # UDP last: its transactions live 32 s (Timer J)
    parser.add_argument("--max-p99", type=float, default=100.0)
    args = parser.parse_args()
    for tool in ("sipp", "stunnel4"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install sip-tester stunnel4)", file=sys.stderr)
            return 2
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca = make_ca("bench CA")
        server = make_leaf(ca, dns=["sip.example.test"])
        client = make_leaf(ca, dns=["gw1.example.test"])
        proc, sip_port, tls_port = start_bench_server(
            work, ca.cert_pem, (server.cert_pem, server.key_pem)
        )
        with contextlib.ExitStack() as stack:
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)  # callbacks run last first: terminate, then wait
            print(f"sipserver pid {proc.pid}; sipp OPTIONS, {args.seconds:g} s per step; rtt in ms")
            print(
                f"{'transport':<9} {'rate':>6} {'answered':>9} {'failed':>7} {'achieved/s':>10} "
                f"{'p50':>7} {'p90':>7} {'p99':>7}"
            )
            for transport in args.transports.split(","):
                port = sip_port
                if transport == "tls":
                    local = free_port()
                    (work / "client.pem").write_bytes(client.cert_pem + client.key_pem)
                    stack.enter_context(
                        stunnel(
                            work,
                            f"[sip]\nclient = yes\naccept = 127.0.0.1:{local}\n"
                            f"connect = 127.0.0.1:{tls_port}\ncert = {work / 'client.pem'}\n"
                            f"CAfile = {work / 'trust' / 'ca.crt'}\nverifyChain = yes\n",
                        )
                    )
                    port = local
                best = None
                for rate in rates:
                    step = run_step(
                        "u1" if transport == "udp" else "t1", port, rate, args.seconds, work
                    )
                    print(
                        f"{transport:<9} {rate:>6} {step['ok']:>9} {step['failed']:>7} {step['achieved']:>10.0f} "
                        f"{step['p50']:>7.2f} {step['p90']:>7.2f} {step['p99']:>7.2f}",
                        flush=True,
                    )
                    if (
                        step["failed"]
                        or step["achieved"] < rate * 0.9
                        or step["p99"] > args.max_p99
                    ):
                        break
                    best = step
                if best:
                    print(
                        f"best {transport}: {best['rate']} OPTIONS/s with 0 failures "
                        f"(p50 {best['p50']:.2f} ms, p99 {best['p99']:.2f} ms)"
                    )
                else:
                    print(f"best {transport}: below {rates[0]} OPTIONS/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
