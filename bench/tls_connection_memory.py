#!/usr/bin/env python3
"""What OpenSSL itself keeps per established mutual-TLS connection, without sipserver's
sockets, tasks or Python objects: --connections server-side SSL objects (our own server
context, as the listener builds it) after in-memory handshakes, their RSS growth divided
by the count. With and without SSL_MODE_RELEASE_BUFFERS, and with the server's session
cache off, to show which share of bench/idle_connections.py's per-connection figure is
OpenSSL's and which is ours. Each variant runs in a fresh process.

    python bench/tls_connection_memory.py [--connections 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = {
    "as sipserver builds it (MODE_RELEASE_BUFFERS, session cache on)": "",
    "without MODE_RELEASE_BUFFERS": "release",
    "session cache off": "cache",
}


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(count: int, change: str) -> float:
    from OpenSSL import SSL
    from OpenSSL._util import lib

    from sipserver.pki.select import Candidate
    from sipserver.transport.tls_context import build_client_context, build_server_context
    from tests.certs import make_ca, make_leaf

    ca = make_ca("bench CA")
    server, client = (
        make_leaf(ca, dns=["sip.example.test"]),
        make_leaf(ca, dns=["gw1.example.test"]),
    )
    server_ctx = build_server_context(
        Candidate.build("s", [server.cert], server.key), [ca.cert], "1.2"
    )
    client_ctx = build_client_context(
        Candidate.build("c", [client.cert], client.key), [ca.cert], "1.2"
    )
    if change == "release":
        lib.SSL_CTX_clear_mode(server_ctx._context, lib.SSL_MODE_RELEASE_BUFFERS)
    if change == "cache":
        lib.SSL_CTX_set_session_cache_mode(server_ctx._context, 0)

    def established() -> SSL.Connection:
        ours = SSL.Connection(server_ctx, None)
        ours.set_accept_state()
        theirs = SSL.Connection(client_ctx, None)
        theirs.set_connect_state()
        theirs.set_tlsext_host_name(b"sip.example.test")
        for _ in range(10):
            for end in (theirs, ours):
                with contextlib.suppress(SSL.WantReadError):
                    end.do_handshake()
            for source, sink in ((theirs, ours), (ours, theirs)):
                with contextlib.suppress(SSL.WantReadError):
                    sink.bio_write(source.bio_read(65536))
        with contextlib.suppress(SSL.WantReadError):
            ours.recv(1)  # an empty read, as an idle connection's reader does
        return ours

    for _ in range(50):  # warm the allocator and the caches
        established()
    gc.collect()
    before = rss_kib()
    kept = [established() for _ in range(count)]
    gc.collect()
    assert len(kept) == count
    return (rss_kib() - before) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        print(f"{measure(args.connections, args.variant):.1f}")
        return 0
    print(
        f"OpenSSL's own memory per established server-side mutual-TLS connection ({args.connections}):"
    )
    for label, change in VARIANTS.items():
        out = subprocess.run(
            [sys.executable, __file__, "--connections", str(args.connections), "--variant", change],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"  {out:>6} KiB  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
