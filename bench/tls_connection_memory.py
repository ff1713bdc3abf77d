#!/usr/bin/env python3
"""What OpenSSL itself keeps per established mutual-TLS connection, without sipserver's
sockets, tasks or Python objects: --connections server-side SSL objects (our own server
context, as the listener builds it, memory BIOs renewed after the handshake as TLSStream
does) after in-memory handshakes, their RSS growth divided by the count. The clients are
the stdlib ssl module's (the system OpenSSL, as bench/idle_connections.py's and most
peers'). Variants: without SSL_MODE_RELEASE_BUFFERS, without renewing the BIOs, with the
session cache off, TLS 1.2, and a client that offers a post-quantum key share (pyOpenSSL's
newer OpenSSL offers X25519MLKEM768, whose parsed key the server keeps). Each variant runs
in a fresh process.

    python bench/tls_connection_memory.py [--connections 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = {
    "as sipserver builds it (MODE_RELEASE_BUFFERS, session cache on, BIOs renewed)": "",
    "without MODE_RELEASE_BUFFERS": "release",
    "memory BIOs kept from the handshake": "bios",
    "session cache off": "cache",
    "TLS 1.2": "tls12",
    "client offering X25519MLKEM768 (pyOpenSSL's OpenSSL)": "mlkem",
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
    from sipserver.transport.tls_stream import renew_memory_bios
    from tests.certs import make_ca, make_leaf

    ca = make_ca("bench CA")
    server, client = (
        make_leaf(ca, dns=["sip.example.test"]),
        make_leaf(ca, dns=["gw1.example.test"]),
    )
    server_ctx = build_server_context(
        Candidate.build("s", [server.cert], server.key), [ca.cert], "1.2"
    )
    if change == "release":
        lib.SSL_CTX_clear_mode(server_ctx._context, lib.SSL_MODE_RELEASE_BUFFERS)
    if change == "cache":
        lib.SSL_CTX_set_session_cache_mode(server_ctx._context, 0)
    work = Path(tempfile.mkdtemp())
    (work / "ca.pem").write_bytes(ca.cert_pem)
    client.write_combined(work / "client.pem")
    stdlib_client = ssl.create_default_context(cafile=str(work / "ca.pem"))
    stdlib_client.load_cert_chain(str(work / "client.pem"))
    if change == "tls12":
        stdlib_client.maximum_version = ssl.TLSVersion.TLSv1_2
    pyopenssl_client = build_client_context(
        Candidate.build("c", [client.cert], client.key), [ca.cert], "1.2"
    )

    def client_end() -> tuple[object, object, object]:
        """(handshake step, bytes to the server, feed bytes from the server)."""
        if change == "mlkem":
            theirs = SSL.Connection(pyopenssl_client, None)
            theirs.set_connect_state()
            theirs.set_tlsext_host_name(b"sip.example.test")

            def take() -> bytes:
                with contextlib.suppress(SSL.WantReadError):
                    return theirs.bio_read(65536)
                return b""

            return theirs.do_handshake, take, theirs.bio_write
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = stdlib_client.wrap_bio(incoming, outgoing, server_hostname="sip.example.test")
        return tls.do_handshake, outgoing.read, incoming.write

    def established() -> SSL.Connection:
        ours = SSL.Connection(server_ctx, None)
        ours.set_accept_state()
        step, take, feed = client_end()
        for _ in range(10):
            with contextlib.suppress(ssl.SSLWantReadError, SSL.WantReadError):
                step()  # type: ignore[operator]
            data = take()  # type: ignore[operator]
            if data:
                ours.bio_write(data)
            with contextlib.suppress(SSL.WantReadError):
                ours.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                feed(ours.bio_read(65536))  # type: ignore[operator]
        if change != "bios":
            renew_memory_bios(ours)
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
