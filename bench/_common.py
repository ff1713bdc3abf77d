"""What both benchmarks share: free ports, starting the server and reading its ports,
stunnel, and reading sipp's counters and round-trip files."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def peers_and_plan(
    callee_port: int, callee_transport: str, security: str = "unsecured", caller_extra: str = ""
) -> str:
    """The configuration's peers and dial plan for the bench calls: the caller gw1 and the
    callee pbx1 both on 127.0.0.1, numbers 5xxx from gw1 routed to pbx1. `caller_extra`:
    more keys for gw1."""
    return (
        '[[peer]]\nname = "gw1"\nfqdn = "gw1.example.test"\naddresses = ["127.0.0.1"]\n'
        + caller_extra
        + '[[peer]]\nname = "pbx1"\nfqdn = "pbx1.example.test"\nkind = "pbx"\n'
        f'addresses = ["127.0.0.1"]\nport = {callee_port}\ntransport = "{callee_transport}"\n'
        "health_check = 0\n"
        f'[[dial_plan]]\nname = "bench"\nsecurity = "{security}"\nnumbers = ["5xxx"]\n'
        'from = ["gw1"]\ntargets = ["pbx1"]\n'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drain(stream: object, copy_to: Path | None = None) -> None:
    """Keep reading a child's output so its pipe never fills (optionally into a file).
    A binary stream (the server's log) is read in chunks, so that this reader costs little
    on the cores it shares with the server."""

    def run() -> None:
        if hasattr(stream, "read1"):
            with open(copy_to or os.devnull, "ab", buffering=0) as raw_sink:
                while chunk := stream.read1(65536):
                    raw_sink.write(chunk)
            return
        with open(copy_to or os.devnull, "a", buffering=1) as sink:
            for line in stream:  # type: ignore[attr-defined]
                sink.write(line)

    threading.Thread(target=run, daemon=True).start()


def start_server(
    config: Path, server_log: Path | None = None, under: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Run sipserver on a config with port 0 and return it with its bound ports by transport.
    Info logging is the default, so the figures include one log line per request. `under`:
    a command the server runs inside (valgrind's, for call_rate.py --instructions)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if under:
        env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every counted run
    command = [sys.executable, "-m", "sipserver", "run", "--config", str(config)]
    proc = subprocess.Popen(
        [*(under or []), *command, "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    ports: dict[str, int] = {}
    assert proc.stdout is not None
    # A log write into a full pipe would stop the server's event loop: give the pipe room
    # for a second of logging at the highest rates, whatever the reader's scheduling.
    with contextlib.suppress(OSError):
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    early: list[bytes] = []  # what came before server_ready belongs in the log file too
    for line in proc.stdout:
        early.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            print(f"server said: {line.decode(errors='replace').rstrip()}", file=sys.stderr)
            continue
        if event["event"] == "listener_started" and not event.get("own"):
            ports.setdefault(event["transport"], event["port"])  # the shared port, with workers
        if event["event"] == "server_ready":
            break
    if server_log is not None:
        with open(server_log, "ab") as sink:
            sink.writelines(early)
    drain(proc.stdout, server_log)
    return proc, ports


@contextlib.contextmanager
def stunnel(work: Path, conf_text: str) -> Iterator[None]:
    conf = work / f"stunnel-{free_port()}.conf"
    conf.write_text("foreground = yes\npid =\n" + conf_text)
    proc = subprocess.Popen(
        ["stunnel4", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Configuration successful" in line:
            break
    drain(proc.stdout)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def sipp_counts(stdout: str, calls: int) -> tuple[int, int]:
    """(successful, failed) from sipp's final statistics screen."""
    ok = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", stdout)
    bad = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", stdout)
    return (int(ok.group(1)) if ok else 0), (int(bad.group(1)) if bad else calls)


def rtt_percentiles(files: list[Path], rtd: str = "1") -> dict[str, float]:
    """Mean, p50/p90/p99 and max of sipp's -trace_rtt files (milliseconds), for one response-time
    timer (rows: date;ms;rtd number)."""
    return percentiles(
        float(row[1])
        for path in files
        for row in csv.reader(path.open(), delimiter=";")
        if len(row) > 1 and row[1].replace(".", "", 1).isdigit() and row[2:3] in ([], [rtd])
    )


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """Mean, p50/p90/p99 and max of setup times (milliseconds); NaN when there are none."""
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")

    mean = sum(ordered) / len(ordered) if ordered else float("nan")
    top = ordered[-1] if ordered else float("nan")
    return {"mean": mean, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": top}


def run_stats(pid: int) -> tuple[float, int]:
    """CPU seconds the process has used so far and the times it was put on a CPU (its
    wake-ups), summed over its threads, from the scheduler's own accounting
    (/proc/PID/task/*/schedstat: nanoseconds on a CPU, waiting, timeslices run)."""
    seconds, slices = 0, 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().split()
            seconds, slices = seconds + int(fields[0]), slices + int(fields[2])
    return seconds / 1e9, slices


def process_tree(pid: int) -> list[int]:
    """The process and every process below it (Kamailio's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def run_stats_tree(pid: int) -> tuple[float, int]:
    """run_stats of the process and of every process below it (Kamailio's workers)."""
    seconds, slices = 0.0, 0
    for member in process_tree(pid):
        more_seconds, more_slices = run_stats(member)
        seconds, slices = seconds + more_seconds, slices + more_slices
    return seconds, slices


def kernel_seconds_tree(pid: int) -> float:
    """Of run_stats_tree's seconds, those spent in the kernel (system calls, and the
    loopback deliveries a send makes on the sender's CPU): /proc/PID/task/*/stat's stime,
    in clock ticks, so only a step of seconds reads well."""
    ticks = 0
    for member in process_tree(pid):
        for stat in Path(f"/proc/{member}/task").glob("*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                ticks += int(stat.read_text().rsplit(")", 1)[1].split()[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds_tree(pid: int) -> float:
    return run_stats_tree(pid)[0]


def rss_kib(pid: int) -> int:
    """The process's resident memory (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# Where a sample's time goes, by the first frame (leaf upwards) whose file matches.
AREAS = (
    (
        "sipserver core (sip/, proxy/, routing/)",
        ("sipserver/sip/", "sipserver/proxy/", "sipserver/routing/"),
    ),
    ("sipserver shell (server/, transport/)", ("sipserver/server/", "sipserver/transport/")),
    ("logging (structlog, orjson, log.py)", ("structlog/", "sipserver/log.py", "orjson")),
    ("pyOpenSSL / cffi", ("OpenSSL/", "cffi")),
    ("trio runtime", ("trio/",)),
)


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample the server with py-spy for `seconds` (raw collapsed stacks into `out`), or
    None when py-spy is not installed (pip install py-spy)."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, int(seconds))),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
            "-r",
            "200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def perf_record(
    seconds: float, out: Path, pids: list[int] | None = None
) -> subprocess.Popen[bytes] | None:
    """Sample with perf for `seconds` into `out`; perf_summary keeps the proxy's threads.
    Native frames: the kernel, the interpreter, the compiled core and OpenSSL each show, for
    Kamailio as for sipserver. None when perf is not installed (apt-get install linux-perf).
    cpu-clock, a software event: this VM offers no hardware counters.

    Without `pids`, every CPU, with frame-pointer stacks (perf attached to a list of pids
    caught none of Kamailio's now and then, and its report's --pid filter drops kernel
    samples). With `pids` (sipserver's processes), those alone, with stacks unwound from
    DWARF: neither the interpreter nor the mypyc-compiled core keeps frame pointers, and
    without whole stacks the interpreter work the core asks for (dicts, allocation, calls)
    is counted as the interpreter's, not the core's. Copying the stacks costs the server a
    little CPU: compare the CPU per call of runs without --perf only."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    command = [perf, "record", "-e", "cpu-clock", "-F", "999", "-o", str(out)]
    if pids:
        command += ["--call-graph", "dwarf,16384", "-p", ",".join(str(pid) for pid in pids)]
    else:
        command += ["-a", "-g"]
    command += ["--", "sleep", str(max(1, int(seconds)))]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def thread_ids(pids: list[int]) -> set[int]:
    """The threads of these processes (perf reports samples by thread)."""
    threads = set(pids)
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            if task.name.isdigit():
                threads.add(int(task.name))
    return threads


def share_lines(counts: dict[str, float], total: float, top: int | None = None) -> list[str]:
    """One line per name, largest first: its count as a percentage of `total`."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return [f"  {count * 100 / total:5.1f}%  {name}" for name, count in ranked]


def perf_summary(data: Path, threads: set[int], sipserver: bool, top: int = 15) -> str:
    """Of the samples in `threads`, the shares by shared object (the kernel's among them),
    then the symbols with the most samples of their own; for sipserver (recorded with whole
    stacks), also what each of its parts costs with what it calls (perf_inclusive)."""

    def shares(sort: str) -> dict[str, float]:
        command = ["perf", "report", "-i", str(data), "--no-children", "--sort", f"pid,{sort}"]
        command += ["--stdio", "-g", "none", "-q", "--field-separator", ";"]
        out = subprocess.run(command, capture_output=True, text=True).stdout
        found: dict[str, float] = {}
        for line in out.splitlines():
            fields = [field.strip() for field in line.split(";")]
            if len(fields) < 3 or not fields[0].endswith("%"):
                continue
            tid = fields[1].split(":", 1)[0]
            if tid.isdigit() and int(tid) in threads:
                key = " ".join(fields[2:])
                found[key] = found.get(key, 0.0) + float(fields[0].rstrip("%"))
        return found

    objects = shares("dso")
    total = sum(objects.values())
    if not total:
        return "no samples"
    lines = [f"  the proxy: {total:.1f} % of the samples recorded; own time by shared object:"]
    lines += share_lines(objects, total, 8)
    lines.append("  own time, top symbols:")
    lines += share_lines(shares("dso,sym"), total, top)
    inclusive = perf_inclusive(data, threads) if sipserver else ""
    if inclusive:
        lines.append(inclusive)
    return "\n".join(lines)


# OpenSSL is linked into cryptography's _rust module (pyOpenSSL's bindings come from there).
_TLS_OBJECTS = ("_rust.abi3", "libssl", "libcrypto", "_cffi_backend", "_openssl")


def _perf_part(stack: list[tuple[str, str]]) -> str:
    """What a sample is charged to, by the frames on its stack: the core before TLS (the
    core hashes with OpenSSL's libcrypto), TLS before the kernel (a record's write)."""
    objects = [dso for _, dso in stack]
    if any("__mypyc" in dso for dso in objects):
        return "the compiled core (sip/, proxy/, routing/), with the interpreter work it calls"
    if any(mark in dso for dso in objects for mark in _TLS_OBJECTS):
        return "TLS (pyOpenSSL, cffi, OpenSSL), with the system calls it makes"
    if stack and "kernel" in stack[0][1]:
        return "the kernel, called from the shell (sockets, epoll, scheduling)"
    return "the interpreter running the shell (trio, connections, logging)"


def perf_inclusive(data: Path, threads: set[int], top: int = 8) -> str:
    """For a recording with whole stacks (perf_record with pids): the share of each part
    with what it calls, and the compiled core's entry points. Empty without stacks."""
    command = ["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"]
    out = subprocess.run(command, capture_output=True, text=True).stdout
    stacks: list[list[tuple[str, str]]] = []
    keep = False
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            tid = line.split()[0]
            keep = tid.isdigit() and int(tid) in threads
            if keep:
                stacks.append([])
            continue
        if keep:
            symbol, _, dso = line.strip().partition(" ")[2].rpartition(" (")
            stacks[-1].append((symbol, dso.rstrip(")")))
    deep = [stack for stack in stacks if len(stack) > 8]
    if not deep or len(deep) < len(stacks) // 2:
        return ""  # frame-pointer stacks: too short to say who called what
    parts: dict[str, float] = {}
    entries: dict[str, float] = {}
    for stack in stacks:
        part = _perf_part(stack)
        parts[part] = parts.get(part, 0) + 1
        compiled = [symbol for symbol, dso in stack if "__mypyc" in dso]
        if compiled:
            entry = compiled[-1].removeprefix("CPyPy_").removeprefix("CPyDef_")
            entries[entry] = entries.get(entry, 0) + 1
    entries = {name: n for name, n in entries.items() if n * 1000 >= len(stacks)}  # >= 0.1 %
    lines = ["  with what each part calls (whole stacks):", *share_lines(parts, len(stacks))]
    lines.append("  the compiled core by entry point, with what it calls:")
    lines += share_lines(entries, len(stacks), top)
    return "\n".join(lines)


def profile_summary(raw: Path, top: int = 15) -> str:
    """Share of samples by area, and the functions with the most samples of their own."""
    areas: dict[str, float] = {}
    leaves: dict[str, float] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        leaves[leaf] = leaves.get(leaf, 0) + count
        area = "other (interpreter, stdlib)"
        for frame in reversed(frames):
            match = next((name for name, keys in AREAS if any(k in frame for k in keys)), None)
            if match:
                area = match
                break
        areas[area] = areas.get(area, 0) + count
    if not total:
        return "no samples"
    lines = [f"{total} samples", *share_lines(areas, total)]
    lines.append("  own time, top functions:")
    lines += share_lines(leaves, total, top)
    return "\n".join(lines)
