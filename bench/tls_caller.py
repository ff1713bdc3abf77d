#!/usr/bin/env python3
"""A mutual-TLS SIP caller that opens a new connection (and so a new handshake) for every
call: INVITE, wait for the 200 (100/180 on the way), ACK and BYE along the Record-Route set,
wait for the BYE's 200, close. The same calls as sipp's through stunnel, at a fraction of
their CPU: stunnel runs a thread per connection and copies every byte twice, and on a
2-core machine it and sipp leave the server too little of the second core to show what a
second worker buys. Here the handshake is pyOpenSSL's (the OpenSSL that cryptography ships:
a third cheaper than Debian's 3.0 behind the ssl module) and the rest a few lines of Python
per message, all in one thread: calls start on a fixed schedule and every connection is
non-blocking, stepped by one selector (a thread per call cost more in switches).

    python bench/tls_caller.py --port 5061 --cert gw.pem --ca ca.crt --rate 200 --calls 1600
        [--resume] [--rtt-file setup.csv]

Prints one JSON line: started, answered, failed, elapsed seconds, its own CPU ms per call,
and the reasons of failures; with --rtt-file, each answered call's setup time (INVITE sent -> 200 received, ms).
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import re
import selectors
import socket
import sys
import time
from pathlib import Path

from OpenSSL import SSL
from OpenSSL._util import lib as _lib

SDP = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)\s*:\s*(\d+)", re.I | re.M)


class CallFailed(Exception):
    pass


class Messages:
    """SIP messages framed by Content-Length out of the bytes fed in."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, str, dict[str, list[str]]]]:
        """(status, CSeq method, headers) of each complete response."""
        self.buffer += data
        found = []
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end]
            length = _CONTENT_LENGTH.search(head)
            total = end + 4 + (int(length.group(1)) if length else 0)
            if len(self.buffer) < total:
                break
            self.buffer = self.buffer[total:]
            start, headers = _parse_head(head.decode())
            method = headers.get("cseq", [" "])[0].split()[-1]
            found.append((int(start.split(" ", 2)[1]), method, headers))
        return found


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


class Call:
    """One call's connection, stepped by the loop whenever its socket is ready."""

    def __init__(self, caller: Caller, number: int, now: float) -> None:
        self.caller, self.number = caller, number
        self.deadline = now + caller.args.timeout
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.raw.setblocking(False)
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.raw.connect_ex(("127.0.0.1", caller.args.port))
        self.tls: SSL.Connection | None = None
        self.state = "connecting"
        self.messages = Messages()
        self.local = ""
        self.sent_at = 0.0
        self.setup_ms = 0.0
        self.outgoing = b""

    def step(self) -> int:
        """Advance as far as the socket allows; the selector events to wait for next
        (0 = the call is over)."""
        if self.state == "connecting":
            error = self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise CallFailed(f"connect: {errno.errorcode.get(error, error)}")
            self.tls = SSL.Connection(self.caller.context, self.raw)
            self.tls.set_connect_state()
            self.tls.set_tlsext_host_name(b"sip.example.test")
            if self.caller.args.resume and self.caller.session is not None:
                self.tls.set_session(self.caller.session)
            self.state = "handshake"
        assert self.tls is not None
        try:
            if self.state == "handshake":
                self.tls.do_handshake()
                host, port = self.raw.getsockname()[:2]
                self.local = f"{host}:{port}"
                self.sent_at = time.perf_counter()
                self._send(_request("INVITE", self._uri(), self.local, self.number, 1, self._to()))
                self.state = "invite"
            if self.outgoing:
                self._send(b"")
            while self.state in ("invite", "bye"):
                for status, method, headers in self.messages.feed(self.tls.recv(65536)):
                    self._response(status, method, headers)
        except SSL.WantReadError:
            return selectors.EVENT_READ
        except SSL.WantWriteError:
            return selectors.EVENT_WRITE
        except SSL.ZeroReturnError:
            raise CallFailed("connection closed by the server") from None
        except SSL.SysCallError as exc:
            raise CallFailed(f"connection broken: {exc}") from None
        except SSL.Error as exc:
            raise CallFailed(f"TLS: {exc}") from None
        return 0 if self.state == "done" else selectors.EVENT_READ

    def _send(self, data: bytes) -> None:
        assert self.tls is not None
        self.outgoing += data
        while self.outgoing:
            sent = self.tls.send(self.outgoing)
            self.outgoing = self.outgoing[sent:]

    def _uri(self) -> str:
        return f"sip:{self.caller.args.number}@sip.example.test"

    def _to(self) -> str:
        return f"To: <sip:{self.caller.args.number}@sip.example.test>\r\n"

    def _response(self, status: int, method: str, headers: dict[str, list[str]]) -> None:
        if status < 200:
            return
        if self.state == "invite" and method == "INVITE":
            self.setup_ms = (time.perf_counter() - self.sent_at) * 1000
            if status != 200:
                raise CallFailed(f"INVITE answered {status}")
            routes = "".join(f"Route: {route}\r\n" for route in _route_set(headers))
            dialog = f"{routes}To: {headers['to'][0]}\r\n"
            target = headers["contact"][0].split(";")[0].strip("<>")
            self.state = "bye"
            self._send(
                _request("ACK", target, self.local, self.number, 1, dialog)
                + _request("BYE", target, self.local, self.number, 2, dialog)
            )
        elif self.state == "bye" and method == "BYE":
            if status != 200:
                raise CallFailed(f"BYE answered {status}")
            if self.caller.args.resume and self.tls is not None:
                self.caller.session = self.tls.get_session()
                # Closed without a shutdown, OpenSSL would mark the session not resumable;
                # like the ssl module, say it was shut down (no close_notify is sent).
                self.tls.set_shutdown(SSL.SENT_SHUTDOWN)
            self.state = "done"

    def close(self) -> None:
        self.raw.close()


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.use_certificate_chain_file(args.cert)
        self.context.use_privatekey_file(args.cert)
        self.context.load_verify_locations(args.ca)
        self.context.set_verify(SSL.VERIFY_PEER, lambda _conn, _cert, _err, _depth, ok: bool(ok))
        # X25519 alone, as the peers in the field (and stunnel, sipp, the stdlib) offer; the
        # ML-KEM hybrid this OpenSSL offers by default costs a handshake more.
        _lib.SSL_CTX_set1_curves_list(self.context._context, b"X25519")
        self.session: SSL.Session | None = None  # the last one, offered as stunnel does
        self.answered = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.setup_ms: list[float] = []

    def run(self) -> float:
        """Place every call on schedule; returns the seconds it took."""
        args = self.args
        selector = selectors.DefaultSelector()
        started = time.monotonic()
        placed = 0
        live: dict[int, Call] = {}
        while placed < args.calls or live:
            now = time.monotonic()
            while placed < args.calls and started + placed / args.rate <= now:
                call = Call(self, placed, now)
                live[id(call)] = call
                selector.register(call.raw, selectors.EVENT_WRITE, call)
                placed += 1
            next_start = started + placed / args.rate if placed < args.calls else now + 0.05
            for key, _events in selector.select(max(0.0, min(next_start, now + 0.05) - now)):
                self._advance(selector, key.data, live)
            now = time.monotonic()
            for call in [c for c in live.values() if c.deadline < now]:
                self._end(selector, call, live, CallFailed("timed out"))
        return time.monotonic() - started

    def _advance(self, selector: selectors.BaseSelector, call: Call, live: dict[int, Call]) -> None:
        try:
            events = call.step()
        except (OSError, CallFailed, ValueError, IndexError) as exc:
            self._end(selector, call, live, exc)
            return
        if events == 0:
            self.answered += 1
            self.setup_ms.append(call.setup_ms)
            self._end(selector, call, live, None)
            return
        selector.modify(call.raw, events, call)

    def _end(
        self,
        selector: selectors.BaseSelector,
        call: Call,
        live: dict[int, Call],
        failure: BaseException | None,
    ) -> None:
        if failure is not None:
            self.failures[type(failure).__name__ + ": " + str(failure)[:80]] += 1
        selector.unregister(call.raw)
        call.close()
        del live[id(call)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="PEM with the caller's key and chain")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--number", default="5000")
    parser.add_argument("--resume", action="store_true", help="offer the last TLS session")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--rtt-file", type=Path)
    args = parser.parse_args()
    caller = Caller(args)
    elapsed = caller.run()
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
