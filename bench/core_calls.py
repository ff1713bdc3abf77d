#!/usr/bin/env python3
"""The pure core alone: whole proxied calls (INVITE/100/180/200/ACK/BYE/200, caller over
TLS, callee over TCP) fed through SipCore with no sockets, no trio and no logging. Prints
the core's CPU microseconds per call; `--profile` prints where they go (cProfile).
`--shed`: the core overloaded with a backlog waiting, so every call is refused (INVITE,
503, and the ACK for it): what a shed call costs.

`--instructions` counts instead of timing: it runs the calls twice under valgrind's
callgrind (100 and 600 calls, hash seed fixed) and prints the instructions the 500 more
calls took, per call. On a VM whose timings move 10-30 % from run to run, that figure
moves by a few instructions, so a change worth 1 % shows (apt-get install valgrind).

`--pace RATE` hands the messages over as they arrive at RATE calls a second, sleeping in
between as the server does in epoll, and times the core's own calls alone: back to back
the core runs warm; paced, the processor idles between messages and the core meets cold
caches, as it does in the server (see docs/benchmarks.md, "The core in place").
`--evict MB` copies MB of other memory before each message instead (or as well): the same
cold caches made on purpose, less at the mercy of what the VM does while it idles.

    python bench/core_calls.py [--calls 5000] [--profile] [--shed] [--admission]
    python bench/core_calls.py --instructions [--shed] [--admission]
    python bench/core_calls.py --pace 800 [--calls 8000]
    python bench/core_calls.py --evict 64 --calls 1000
    python bench/core_calls.py --misses

`--misses` says where the cold cost comes from: it runs the calls under valgrind's
callgrind with the caches of this machine's cores simulated (32 KiB L1 for code and for
data, 1 MiB L2 as the last level) and 2 MiB of other memory read before each message, as
--evict does, and prints the cache lines each message has to fetch from beyond the L2
(in the server: from the shared L3 or from memory), in all and by function. Like
--instructions it differences two runs (50 and 250 calls), so start-up cancels out, and
like it the figures are counts, steady from run to run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sipserver.build import core_build  # noqa: E402
from sipserver.config.loader import parse_config  # noqa: E402
from sipserver.config.schema import PeerSettings  # noqa: E402
from sipserver.proxy.core import SipCore  # noqa: E402
from sipserver.proxy.events import Event  # noqa: E402
from sipserver.server.collector import tune_for_serving  # noqa: E402
from sipserver.sip.flow import Flow, Transmit, Transport  # noqa: E402
from sipserver.sip.message import Request, parse_message  # noqa: E402

CONFIG = """
[server]
fqdn = "sip.example.test"
addresses = ["127.0.0.1"]
[[peer]]
name = "gw1"
fqdn = "gw1.example.test"
addresses = ["127.0.0.1"]
[[peer]]
name = "pbx1"
fqdn = "pbx1.example.test"
kind = "pbx"
addresses = ["192.0.2.20"]
port = 5070
transport = "tcp"
health_check = 0
[[dial_plan]]
name = "bench"
security = "unsecured"
numbers = ["5xxx"]
from = ["gw1"]
targets = ["pbx1"]
"""
CALLER = Flow(Transport.TLS, ("127.0.0.1", 5061), ("127.0.0.1", 40000), connection_id=1)
CALLEE = Flow(Transport.TCP, ("127.0.0.1", 41000), ("192.0.2.20", 5070), connection_id=2)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(n: int) -> bytes:
    head = (
        f"INVITE sip:5000@sip.example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-{n}-1;rport\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:40000>;tag={n}SIPpTag00\r\n"
        f"To: <sip:5000@sip.example.test>\r\n"
        f"Call-ID: {n}-bench@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: sip:sipp@127.0.0.1:40000;transport=tls\r\nMax-Forwards: 70\r\n"
        f"Subject: Performance Test\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def answer(request: Request, status: int, reason: str, body: bytes = b"") -> bytes:
    vias = "".join(f"Via: {v}\r\n" for v in request.headers.get_all("Via"))
    rr = "".join(f"Record-Route: {v}\r\n" for v in request.headers.get_all("Record-Route"))
    to = request.headers.get("To") or ""
    to = to if ";tag=" in to else to + ";tag=callee1"
    number, method = request.cseq
    return (
        f"SIP/2.0 {status} {reason}\r\n{vias}{rr}From: {request.headers.get('From')}\r\n"
        f"To: {to}\r\nCall-ID: {request.call_id}\r\nCSeq: {number} {method}\r\n"
        f"Contact: <sip:callee@192.0.2.20:5070;transport=tcp>\r\n"
        f"{'Content-Type: application/sdp' + chr(13) + chr(10) if body else ''}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def to_callee(out: list[Transmit]) -> Request:
    for item in out:
        if item.flow.remote == CALLEE.remote:
            message = parse_message(item.data)
            assert isinstance(message, Request)
            return message
    raise AssertionError("nothing went to the callee")


class Pacer:
    """--pace/--evict: each message handed over at its time of arrival (sleeping until
    then), or after `evict` bytes of other memory traffic; the core's own time summed."""

    def __init__(self, rate: float, evict: int = 0, *, by_crc: bool = False) -> None:
        self.gap = 1 / (rate * MESSAGES_PER_CALL)
        self.next = time.monotonic()
        self.core_ns = 0
        self.messages = 0
        # Copied before each message, so that the caches hold it and not the core's memory.
        self.other = bytearray(evict)
        # Under callgrind (--misses) the memory is read by zlib's crc32 instead of copied:
        # a read empties the simulated caches as well, without a 2 MiB allocation and copy
        # simulated before every message.
        self.by_crc = by_crc

    def feed(
        self, core: SipCore, data: bytes, flow: Flow, peer: PeerSettings | None, now: float
    ) -> list[Transmit]:
        self.next += self.gap
        wait = self.next - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if self.by_crc:
            zlib.crc32(self.other)
        elif self.other:
            bytes(self.other)
        started = time.perf_counter_ns()
        out = core.receive_stream_message(data, flow, peer, now)
        core.next_deadline()  # as the shell asks after every message
        self.core_ns += time.perf_counter_ns() - started
        self.messages += 1
        return out


MESSAGES_PER_CALL = 7  # INVITE, 100, 180, 200, ACK, BYE, 200
PACER: Pacer | None = None


def feed(
    core: SipCore, data: bytes, flow: Flow, peer: PeerSettings | None, now: float
) -> list[Transmit]:
    if PACER is not None:
        return PACER.feed(core, data, flow, peer, now)
    return core.receive_stream_message(data, flow, peer, now)


def one_call(core: SipCore, n: int, now: float) -> list[Event]:
    """One whole call; returns its events, as the shell would get them to log."""
    gw1 = core.peers.by_name("gw1")  # the caller's connection is verified mutual TLS
    out = feed(core, invite(n), CALLER, gw1, now)
    forwarded = to_callee(out)
    feed(core, answer(forwarded, 100, "Trying"), CALLEE, None, now)
    feed(core, answer(forwarded, 180, "Ringing"), CALLEE, None, now)
    ok = feed(core, answer(forwarded, 200, "OK", SDP), CALLEE, None, now)
    reply = parse_message(next(t.data for t in ok if t.flow == CALLER))
    route = "".join(f"Route: {v}\r\n" for v in reversed(reply.headers.get_all("Record-Route")))
    tag = (reply.headers.get("To") or "").split("tag=")[1]
    dialog = (
        f"From: sipp <sip:sipp@127.0.0.1:40000>;tag={n}SIPpTag00\r\n"
        f"To: <sip:5000@sip.example.test>;tag={tag}\r\nCall-ID: {n}-bench@127.0.0.1\r\n"
        f"{route}Max-Forwards: 70\r\n"
    )
    ack = (
        f"ACK sip:callee@192.0.2.20:5070;transport=tcp SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-{n}-2;rport\r\n{dialog}"
        f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    feed(core, ack, CALLER, gw1, now)
    bye = ack.replace(b"ACK sip:", b"BYE sip:").replace(b"CSeq: 1 ACK", b"CSeq: 2 BYE")
    bye = bye.replace(f"-{n}-2;".encode(), f"-{n}-3;".encode())
    out = feed(core, bye, CALLER, gw1, now)
    forwarded_bye = to_callee(out)
    feed(core, answer(forwarded_bye, 200, "OK"), CALLEE, None, now)
    return core.take_events()


def one_shed_call(core: SipCore, n: int, now: float) -> None:
    gw1 = core.peers.by_name("gw1")
    out = core.receive_stream_message(invite(n), CALLER, gw1, now)
    refusal = out[0].data
    assert refusal.startswith(b"SIP/2.0 503 "), refusal[:40]
    to = refusal[refusal.index(b"\r\nTo: ") + 2 :].split(b"\r\n", 1)[0]
    ack = (
        b"ACK sip:5000@sip.example.test SIP/2.0\r\n"
        + f"Via: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-{n}-1;rport\r\n".encode()
        + f"From: sipp <sip:sipp@127.0.0.1:40000>;tag={n}SIPpTag00\r\n".encode()
        + to
        + f"\r\nCall-ID: {n}-bench@127.0.0.1\r\nCSeq: 1 ACK\r\n".encode()
        + b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    assert core.receive_stream_message(ack, CALLER, gw1, now) == []
    core.take_events()


def under_callgrind(
    what: str, calls: int, options: list[str], tool: list[str] | None = None, out: str = "/dev/null"
) -> str:
    """Run this script for `calls` calls, with `options`, under callgrind (with `tool`'s
    options), the hash seed fixed so that two runs differ by their calls alone. Returns
    valgrind's own output."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit(f"{what} needs valgrind (apt-get install valgrind)")
    callgrind = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *(tool or [])]
    run = subprocess.run(
        [*callgrind, sys.executable, __file__, "--calls", str(calls), *options],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stderr


def count_instructions(options: list[str], few: int = 100, many: int = 600) -> int:
    """Instructions per call: callgrind's totals for `many` and `few` calls, differenced
    (start-up, imports and warm-up cancel out)."""
    totals = []
    for calls in (few, many):
        stderr = under_callgrind("--instructions", calls, options)
        found = re.search(r"Collected : (\d+)", stderr)
        if found is None:
            raise SystemExit(f"no instruction count in valgrind's output:\n{stderr[-2000:]}")
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) // (many - few)


# The caches callgrind simulates, as this machine's cores have them (lscpu): what misses
# the L2 is fetched from the shared L3 or from memory.
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"]
FLUSH_BYTES = 2 << 20  # read before each message: twice the simulated L2
LINE_EVENTS = ("ILmr", "DLmr", "DLmw")  # the lines fetched from beyond the L2


# Only the core's own calls are counted (the harness building and reading messages is
# not): callgrind collects from entry to return of the shell's two ways in.
CORE_ENTRIES = (
    "CPyPy_core___SipCore___receive_stream_message",
    "CPyPy_core___SipCore___next_deadline",
)


def count_misses(few: int = 50, many: int = 250, top: int = 40) -> int:
    """--misses: cache lines per message from beyond the L2, differenced between `many`
    and `few` cold calls under callgrind, in all and for the functions that fetch most."""
    if core_build() != "compiled":
        raise SystemExit("--misses counts from the compiled core's entry points: build it first")
    tool = ["--cache-sim=yes", *CACHES, "--collect-atstart=no"]
    tool += [f"--toggle-collect={entry}" for entry in CORE_ENTRIES]
    tool += ["--compress-strings=no", "--compress-pos=no"]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for calls in (few, many):
            out = Path(scratch) / f"callgrind.{calls}"
            under_callgrind("--misses", calls, ["--cold-calls"], tool, str(out))
            runs.append(self_cost_by_function(out.read_text()))
    messages = (many - few) * MESSAGES_PER_CALL
    per_function: dict[str, dict[str, float]] = {}
    for name, counts in runs[1].items():
        before = runs[0].get(name, {})
        per_function[name] = {
            event: (count - before.get(event, 0)) / messages for event, count in counts.items()
        }
    total = {
        event: sum(events.get(event, 0.0) for events in per_function.values())
        for event in ("Ir", "I1mr", "D1mr", "D1mw", *LINE_EVENTS)
    }
    beyond = sum(total[event] for event in LINE_EVENTS)
    print(
        f"per message in the core, cold (2 MiB read before each): {total['Ir']:,.0f} "
        f"instructions, {total['I1mr']:,.0f} L1 code misses, "
        f"{total['D1mr'] + total['D1mw']:,.0f} L1 data misses, {beyond:,.0f} lines from "
        f"beyond the L2 ({total['ILmr']:,.0f} code, {total['DLmr'] + total['DLmw']:,.0f} "
        f"data: {beyond * 64 / 1024:,.1f} KiB)"
    )
    by_object: dict[str, list[float]] = {}
    for name, events in per_function.items():
        shares = by_object.setdefault(name.split(":", 1)[0], [0.0, 0.0])
        shares[0] += events.get("ILmr", 0.0)
        shares[1] += events.get("DLmr", 0.0) + events.get("DLmw", 0.0)
    print(f"\n{'lines':>7} {'code':>6} {'data':>6}  object")
    for shared_object, (code, data) in sorted(by_object.items(), key=lambda i: -sum(i[1])):
        if code + data >= 1:
            print(f"{code + data:7.1f} {code:6.1f} {data:6.1f}  {shared_object}")
    ranked = sorted(
        per_function.items(), key=lambda item: -sum(item[1].get(e, 0.0) for e in LINE_EVENTS)
    )
    print(f"\n{'lines':>7} {'code':>6} {'data':>6} {'instr':>8}  function (its own cost)")
    for name, events in ranked[:top]:
        lines = sum(events.get(e, 0.0) for e in LINE_EVENTS)
        data = events.get("DLmr", 0.0) + events.get("DLmw", 0.0)
        print(
            f"{lines:7.1f} {events.get('ILmr', 0.0):6.1f} {data:6.1f} "
            f"{events.get('Ir', 0.0):8.0f}  {name}"
        )
    return 0


def self_cost_by_function(text: str) -> dict[str, dict[str, int]]:
    """A callgrind output file's self cost per function ("object:function"): the line
    after a `calls=` line is the callee's inclusive cost, which is not the caller's own."""
    events: list[str] = []
    totals: dict[str, dict[str, int]] = {}
    current: dict[str, int] = {}
    shared_object = ""
    skip_next = False
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("ob="):
            shared_object = line[3:].rsplit("/", 1)[-1]
        elif line.startswith("fn="):
            current = totals.setdefault(f"{shared_object}:{line[3:]}", {})
        elif line.startswith("calls="):
            skip_next = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip_next:
                skip_next = False
                continue
            # A line may leave out its trailing zero counts.
            for event, count in zip(events, line.split()[1:], strict=False):
                current[event] = current.get(event, 0) + int(count)
    return totals


def cold_calls(core: SipCore, calls: int) -> int:
    """--misses' child under callgrind: `calls` calls, the L2 flushed before each message."""
    global PACER
    PACER = Pacer(1e9, FLUSH_BYTES, by_crc=True)
    for n in range(1000, 1000 + calls):
        one_call(core, n, n / 1000)
    return 0


def timed_cold(core: SipCore, rate: float | None, evict_mb: float, calls: int) -> int:
    """The core's own time per message, back to back and then paced or after other memory
    traffic (or both), in one process."""
    global PACER
    figures = []
    first = 1000
    clock = rate or 1000.0  # the core's clock runs at the rate in both rounds
    # 1e9 calls a second: never a wait, the messages back to back.
    for pacer in (Pacer(1e9), Pacer(rate or 1e9, int(evict_mb * (1 << 20)))):
        PACER = pacer
        for n in range(first, first + calls):
            one_call(core, n, n / clock)
        figures.append(pacer.core_ns / pacer.messages / 1000)
        first += calls
    PACER = None
    warm, cold = figures
    how = " and ".join(
        ([f"paced at {rate:g} calls/s"] if rate else [])
        + ([f"after {evict_mb:g} MB of other memory traffic"] if evict_mb else [])
    )
    print(
        f"{calls} calls: the core's own time {warm:.1f} µs a message back to back, "
        f"{cold:.1f} µs {how} ({cold / warm:.1f}x; {cold * MESSAGES_PER_CALL:.0f} µs a call)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--shed", action="store_true", help="every call refused with 503")
    parser.add_argument(
        "--admission",
        action="store_true",
        help="every call-admission limit set (none reached): what counting calls costs",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per call under callgrind instead of timing",
    )
    parser.add_argument(
        "--pace",
        type=float,
        metavar="RATE",
        help="hand the messages over at RATE calls a second (idle in between, as the server "
        "is) and time the core's own calls, paced and back to back",
    )
    parser.add_argument(
        "--evict",
        type=float,
        default=0.0,
        metavar="MB",
        help="copy MB of other memory before each message (what the shell, the kernel and "
        "other processes do to the caches) and time the core's own calls, so and back to back",
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="count the cache lines each message fetches from beyond the L2, cold, under "
        "callgrind, in all and by function",
    )
    parser.add_argument("--cold-calls", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.misses:
        return count_misses()
    if (args.pace or args.evict) and (args.shed or args.profile or args.instructions):
        parser.error(
            "--pace and --evict time whole calls alone (no --shed, --profile or --instructions)"
        )
    if args.instructions:
        options = [flag for flag in ("--shed", "--admission") if getattr(args, flag[2:])]
        per_call = count_instructions(options)
        print(f"{per_call:,} instructions per {'shed ' if args.shed else ''}call through the core")
        return 0
    text = CONFIG
    if args.admission:
        text = text.replace(
            'addresses = ["127.0.0.1"]\n[[peer]]\nname = "pbx1"',
            'addresses = ["127.0.0.1"]\nmax_calls = 1000000\nmax_call_rate = 1000000.0\n'
            '[[peer]]\nname = "pbx1"',
        )
        text += "max_calls = 1000000\n[limits]\nmax_calls = 1000000\n"
    config = parse_config(text)
    core = SipCore(config)
    tune_for_serving()  # the collector as the server has it: each young pass walks cold memory
    call: Callable[[SipCore, int, float], object] = one_call
    if args.shed:
        core.set_overloaded(True, 0.5)
        core.set_backlogged(True)
        call = one_shed_call
    for n in range(200):  # warm up
        call(core, n, 0.0)
    if args.cold_calls:
        return cold_calls(core, args.calls)
    if args.pace or args.evict:
        return timed_cold(core, args.pace, args.evict, args.calls)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    # Rounds of calls; the fastest round is the figure least disturbed by the machine.
    rounds = []
    per_round = max(1, args.calls // 5)
    for first in range(1000, 1000 + 5 * per_round, per_round):
        started = time.process_time()
        for n in range(first, first + per_round):
            call(core, n, n / 1000)
        rounds.append((time.process_time() - started) * 1e6 / per_round)
    if profiler:
        profiler.disable()
    print(
        f"{5 * per_round} {'shed ' if args.shed else ''}calls through the core: "
        f"{min(rounds):.0f} µs CPU per call at best "
        f"(median {sorted(rounds)[2]:.0f}; including building the test's own messages)"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
