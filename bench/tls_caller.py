#!/usr/bin/env python3
"""A mutual-TLS SIP caller that opens a new connection (and so a new handshake) for every
call: INVITE, wait for the 200 (100/180 on the way), ACK and BYE along the Record-Route set,
wait for the BYE's 200, close. The same calls as sipp's through stunnel, at a fraction of
their CPU: stunnel runs a thread per connection and copies every byte twice, and on a
2-core machine it and sipp leave the server too little of the second core to show what a
second worker buys. Here the handshake is the ssl module's (OpenSSL, GIL released), the rest
a few lines of Python per message; calls start on a fixed schedule from a pool of threads.

    python bench/tls_caller.py --port 5061 --cert gw.pem --ca ca.crt --rate 200 --calls 1600
        [--resume] [--rtt-file setup.csv]

Prints one JSON line: started, answered, failed, elapsed seconds, its own CPU ms per call,
and the reasons of failures; with --rtt-file, each answered call's setup time (INVITE sent -> 200 received, ms).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SDP = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)\s*:\s*(\d+)", re.I | re.M)


class CallFailed(Exception):
    pass


class Messages:
    """SIP messages read off one TLS connection, framed by Content-Length."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.buffer = b""

    def next(self) -> tuple[str, dict[str, list[str]]]:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buffer[:end]
                length = _CONTENT_LENGTH.search(head)
                total = end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buffer) >= total:
                    self.buffer = self.buffer[total:]
                    return _parse_head(head.decode())
            chunk = self.tls.recv(65536)
            if not chunk:
                raise CallFailed("connection closed by the server")
            self.buffer += chunk

    def response_to(self, method: str) -> tuple[int, dict[str, list[str]]]:
        """The next final response to `method` (provisional ones skipped)."""
        while True:
            start, headers = self.next()
            status = int(start.split(" ", 2)[1])
            cseq = headers.get("cseq", [""])[0]
            if status >= 200 and cseq.endswith(method):
                return status, headers


def _parse_head(head: str) -> tuple[str, dict[str, list[str]]]:
    start, *lines = head.split("\r\n")
    headers: dict[str, list[str]] = collections.defaultdict(list)
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()].append(value.strip())
    return start, headers


def _route_set(headers: dict[str, list[str]]) -> list[str]:
    """A UAC's route set: the 2xx's Record-Route values, last first (RFC 3261 §12.1.2)."""
    values = [v.strip() for line in headers.get("record-route", []) for v in line.split(",")]
    return list(reversed(values))


def _request(method: str, uri: str, local: str, call: int, cseq: int, extra: str) -> bytes:
    body = SDP if method == "INVITE" else ""
    content = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {local};branch=z9hG4bK-{call}-{method.lower()};rport\r\n"
        f"From: <sip:caller@gw1.example.test>;tag=t{call}\r\n"
        f"Call-ID: {call}-tlscaller@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:caller@{local};transport=tls>\r\nMax-Forwards: 70\r\n"
        f"{extra}{content}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = ssl.create_default_context(cafile=args.ca)
        self.context.load_cert_chain(args.cert)
        self.session: ssl.SSLSession | None = None  # the last one, offered as stunnel does
        self.lock = threading.Lock()
        self.answered = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.setup_ms: list[float] = []

    def call(self, number: int) -> None:
        try:
            setup = self._call(number)
        except (OSError, CallFailed, ValueError, IndexError) as exc:
            with self.lock:
                self.failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
            return
        with self.lock:
            self.answered += 1
            self.setup_ms.append(setup)

    def _call(self, number: int) -> float:
        args = self.args
        with socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout) as raw:
            session = self.session if args.resume else None
            with self.context.wrap_socket(
                raw, server_hostname="sip.example.test", session=session
            ) as tls:
                host, port = tls.getsockname()[:2]
                local = f"{host}:{port}"
                messages = Messages(tls)
                to = f"To: <sip:{args.number}@sip.example.test>\r\n"
                uri = f"sip:{args.number}@sip.example.test"
                sent = time.perf_counter()
                tls.sendall(_request("INVITE", uri, local, number, 1, to))
                status, headers = messages.response_to("INVITE")
                setup = (time.perf_counter() - sent) * 1000
                if status != 200:
                    raise CallFailed(f"INVITE answered {status}")
                routes = "".join(f"Route: {route}\r\n" for route in _route_set(headers))
                dialog = f"{routes}To: {headers['to'][0]}\r\n"
                target = headers["contact"][0].split(";")[0].strip("<>")
                tls.sendall(
                    _request("ACK", target, local, number, 1, dialog)
                    + _request("BYE", target, local, number, 2, dialog)
                )
                status, _ = messages.response_to("BYE")
                if status != 200:
                    raise CallFailed(f"BYE answered {status}")
                if args.resume:
                    self.session = tls.session
                return setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="PEM with the caller's key and chain")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--number", default="5000")
    parser.add_argument("--resume", action="store_true", help="offer the last TLS session")
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--rtt-file", type=Path)
    args = parser.parse_args()
    caller = Caller(args)
    started = time.monotonic()
    with ThreadPoolExecutor(args.threads) as pool:
        for number in range(args.calls):
            delay = started + number / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the schedule, not waiting for an event
            pool.submit(caller.call, number)
    elapsed = time.monotonic() - started
    if args.rtt_file is not None:
        args.rtt_file.write_text("".join(f"{ms:.3f}\n" for ms in caller.setup_ms))
    print(
        json.dumps(
            {
                "started": args.calls,
                "answered": caller.answered,
                "failed": sum(caller.failures.values()),
                "elapsed": round(elapsed, 3),
                "cpu_ms_per_call": round(time.process_time() * 1000 / max(1, args.calls), 3),
                "failures": dict(caller.failures.most_common(5)),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
