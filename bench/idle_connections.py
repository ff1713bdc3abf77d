#!/usr/bin/env python3
"""Memory per idle mutual-TLS connection: open N TLS connections to the server with a client
certificate, let them sit, and print how much the server's resident memory grew per
connection (and again after a while of CRLF keep-alives, to see that nothing creeps).

    python bench/idle_connections.py [--connections 2000] [--hold 10]
"""

from __future__ import annotations

import argparse
import resource
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

from _common import rss_kib, start_server

from tests.certs import make_ca, make_leaf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds of keep-alives")
    parser.add_argument(
        "--report-every", type=float, default=0.0, help="print the server's RSS every N seconds"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections * 2 + 100), hard))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca = make_ca("bench CA")
        make_leaf(ca, dns=["sip.example.test"]).write_pair(work / "server", "sip")
        (work / "trust").mkdir()
        (work / "trust" / "ca.crt").write_bytes(ca.cert_pem)
        gw = make_leaf(ca, dns=["gw1.example.test"])
        gw_cert, gw_key = gw.write_pair(work, "gw1")
        config = work / "bench.toml"
        config.write_text(
            '[server]\nfqdn = "sip.example.test"\naddresses = ["127.0.0.1"]\nsip_port = 0\n'
            'tls_port = 0\n[tls]\ncertificate_dir = "server"\ntrust_dir = "trust"\n'
            f"[limits]\nmax_connections = {args.connections + 100}\n"
            f"max_connections_per_address = {args.connections + 100}\n"
            '[[peer]]\nname = "gw1"\nfqdn = "gw1.example.test"\naddresses = ["127.0.0.1"]\n'
        )
        proc, ports = start_server(config)
        try:
            context = ssl.create_default_context(cafile=str(work / "trust" / "ca.crt"))
            context.load_cert_chain(str(gw_cert), str(gw_key))
            context.check_hostname = False
            time.sleep(1)
            before = rss_kib(proc.pid)
            held = []
            for _ in range(args.connections):
                raw = socket.create_connection(("127.0.0.1", ports["tls"]))
                held.append(context.wrap_socket(raw, server_hostname="sip.example.test"))
            time.sleep(2)
            opened = rss_kib(proc.pid)
            started = time.monotonic()
            deadline = started + args.hold
            next_report = started + args.report_every if args.report_every else deadline + 1
            while time.monotonic() < deadline:  # RFC 5626 keep-alives on every connection
                for conn in held:
                    conn.sendall(b"\r\n\r\n")
                time.sleep(1)
                if time.monotonic() >= next_report:
                    now_rss = rss_kib(proc.pid)
                    print(
                        f"  after {time.monotonic() - started:.0f} s of keep-alives: {now_rss} KiB "
                        f"({(now_rss - opened) / args.connections:+.2f} KiB per connection)",
                        flush=True,
                    )
                    next_report += args.report_every
            held_rss = rss_kib(proc.pid)
            per = (opened - before) / args.connections
            creep = (held_rss - opened) / args.connections
            print(
                f"{args.connections} idle mutual-TLS connections: server RSS {before} -> "
                f"{opened} KiB, {per:.1f} KiB per connection; after {args.hold:g} s of "
                f"keep-alives {held_rss} KiB ({creep:+.2f} KiB per connection)"
            )
            for conn in held:
                conn.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
