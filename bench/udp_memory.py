#!/usr/bin/env python3
"""Memory under sustained UDP load: sipp sends OPTIONS at --rate for --seconds; the
server's resident memory is sampled each second. Completed UDP server transactions wait out
Timer J (64 x T1 = 32 s), so memory grows for the first 32 s and should then stay flat;
the plateau divided by the transactions alive is what each one costs.

    python bench/udp_memory.py [--rate 1000] [--seconds 45]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, rss_kib
from options_rate import SCENARIO, start_bench_server

from tests.certs import make_ca, make_leaf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=45)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "options.xml").write_text(SCENARIO)
        ca = make_ca("bench CA")
        server = make_leaf(ca, dns=["sip.example.test"])
        proc, udp_port, _ = start_bench_server(work, ca.cert_pem, (server.cert_pem, server.key_pem))
        try:
            time.sleep(1)
            before = rss_kib(proc.pid)
            sipp = subprocess.Popen(
                [
                    "sipp",
                    "-sf",
                    str(work / "options.xml"),
                    "-t",
                    "u1",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(free_port()),
                    "-r",
                    str(args.rate),
                    "-m",
                    str(args.rate * args.seconds),
                    "-nostdin",
                    f"127.0.0.1:{udp_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=work,
            )
            samples = []
            for second in range(args.seconds):
                time.sleep(1)
                samples.append(rss_kib(proc.pid))
                if second % 5 == 4:
                    print(
                        f"{second + 1:>3} s  RSS {samples[-1]} KiB (+{samples[-1] - before})",
                        flush=True,
                    )
            sipp.wait(60)
            live = args.rate * 32  # transactions alive in the plateau (Timer J)
            plateau = max(samples)
            print(
                f"UDP OPTIONS at {args.rate}/s: RSS {before} -> {plateau} KiB at the plateau; "
                f"about {(plateau - before) * 1024 / live:.0f} bytes per live transaction "
                f"({live} alive for Timer J)"
            )
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
