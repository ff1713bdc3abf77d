"""Every core of the machine: `server.workers = N` runs N worker processes that share the
listening ports (SO_REUSEPORT), under this supervisor.

The kernel hands each new TCP/TLS connection to one worker, and spreads UDP datagrams by
their source, so one peer socket's datagrams (a request, its retransmissions and its
CANCEL) reach one worker. Each worker also listens on ports of its own and puts them in its
Via and Record-Route: responses to what it sent, and in-dialog requests of the calls it
routed, come back to it. A connection is served by the worker that accepted it.

The supervisor picks the shared ports (when the configuration says 0), makes the server
certificate once (so the workers do not each generate one), starts the workers, says
`server_ready` once all of them are, forwards SIGHUP (reload) and SIGTERM/SIGINT (drain)
to them, restarts one that dies, and serves /healthz and /metrics summed over them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sipserver.certstore import CertificateSetupError
from sipserver.config.schema import Config
from sipserver.server.admin import METRICS_TYPE, Page, serve_http
from sipserver.server.binding_store import owner_name
from sipserver.server.credentials import Credentials
from sipserver.server.local_store import LocalStore
from sipserver.server.shared_call_counts import COUNTS_KEY
from sipserver.sip.flow import Transport
from sipserver.transport.listeners import StartupError, port_free_for_both

log = structlog.get_logger("sipserver")

READY_WITHIN = 30.0  # seconds every worker gets to open its listeners
ASK_TIMEOUT = 2.0  # seconds a worker's admin page may take
# A dead worker is replaced at once; one that keeps dying soon after it started waits
# twice as long each time (a crash loop must not spin), up to the longest pause.
RESTART_PAUSE = 0.1
LONGEST_RESTART_PAUSE = 30.0
STABLE_AFTER = 10.0  # seconds a worker must live for its next death to count as new
COUNTER_SCRAPE = 5.0  # how often the supervisor keeps a copy of each worker's counters
# Families whose samples only grow: a worker's last values stay in the sums once it ends.
MONOTONIC_TYPES = {"counter", "histogram", "summary"}
# Gauges that add up over workers; the others show the worst (highest, or for target_up
# and certificate days, lowest) worker's value.
SUMMED_GAUGES = {
    "sipserver_connections_open",
    "sipserver_registered_bindings",
    "sipserver_peer_active_calls",
    "sipserver_dial_plan_active_calls",
}
LOWEST_GAUGES = {
    "sipserver_cluster_store_up",
    "sipserver_target_up",
    "sipserver_certificate_days_to_expiry",
    "sipserver_peer_certificate_days_to_expiry",
}


def worker_count(setting: int | str) -> int:
    if setting == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return int(setting)


def _free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class Supervisor:
    def __init__(self, config: Config, run_args: list[str], count: int) -> None:
        """`run_args`: the `sipserver run` options each worker gets (config, log format...)."""
        self.config = config
        self.run_args = run_args
        self.count = count
        # Named here, made by run() (which removes it): an object that never runs leaves
        # nothing behind. os.mkdir refuses a name that exists, as mkdtemp does.
        self._sockets_dir = os.path.join(
            tempfile.gettempdir(), f"sipserver-workers-{os.getpid()}-{secrets.token_hex(6)}"
        )
        self.admin_sockets = [f"{self._sockets_dir}/worker-{i}.sock" for i in range(count)]
        # The workers' shared view (softphone bindings), kept here: nothing to install.
        self.store = LocalStore()
        self.store_socket = f"{self._sockets_dir}/store.sock"
        self.processes: list[trio.Process | None] = [None] * count
        self.stopping = False
        self.ready = False
        # Why a worker is down (between its death and its replacement answering).
        self.down: dict[int, str] = {}
        self.restarts = [0] * count
        # The last /metrics each worker answered, and what ended workers had counted:
        # summed counters never go backwards when a worker dies or does not answer in time.
        self._last_metrics: list[list[Metric] | None] = [None] * count
        self._retired: list[Metric] = []

    def _shared_ports(self) -> tuple[int, int]:
        server = self.config.server
        sip, tls = server.sip_port, server.tls_port
        if sip == 0:
            sip = port_free_for_both(server.addresses) or 0
        if tls == 0:
            tls = _free_tcp_port(server.addresses[0] if server.addresses else "127.0.0.1")
        return sip, tls

    def _command(self, index: int, sip: int, tls: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sipserver",
            "run",
            *self.run_args,
            "--sip-port",
            str(sip),
            "--tls-port",
            str(tls),
            "--worker-index",
            str(index),
            "--workers",
            str(self.count),
            "--admin-socket",
            self.admin_sockets[index],
            "--shared-store",
            f"unix:{self.store_socket}",
        ]

    async def run(self) -> int:
        os.mkdir(self._sockets_dir, 0o700)
        try:
            return await self._run()
        finally:
            shutil.rmtree(self._sockets_dir, ignore_errors=True)

    async def _run(self) -> int:
        if Transport.TLS in self.config.server.transports:
            try:  # once, here: N workers must not each generate a certificate of their own
                Credentials(lambda _: None).prepare(self.config, dt.datetime.now(dt.UTC))
            except CertificateSetupError as exc:
                raise StartupError(str(exc), exc.key) from exc
        sip, tls = self._shared_ports()
        failed = trio.Event()
        # Signals are ours from the start: a SIGHUP during start-up must not kill us.
        wanted = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        with trio.open_signal_receiver(*wanted) as signals:
            return await self._supervise(sip, tls, failed, signals)

    async def _supervise(
        self, sip: int, tls: int, failed: trio.Event, signals: AsyncIterator[int]
    ) -> int:
        admin = self.config.admin.host_port
        listeners: list[trio.SocketListener] = []
        if admin is not None:  # bound before the workers bind free ports of their own
            try:
                listeners = await trio.open_tcp_listeners(admin[1], host=admin[0])
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on admin.address {admin[0]}:{admin[1]}: {exc.strerror}",
                    "admin.address",
                ) from exc
        async with trio.open_nursery() as nursery:
            await nursery.start(self.store.serve, self.store_socket)
            for index in range(self.count):
                nursery.start_soon(self._keep, index, self._command(index, sip, tls), failed)
            with trio.move_on_after(READY_WITHIN) as waiting:
                async with trio.open_nursery() as race:
                    race.start_soon(self._all_answer, race.cancel_scope)
                    race.start_soon(self._first_failure, failed, race.cancel_scope)
            if failed.is_set() or waiting.cancelled_caught:
                await self._stop_all(signal.SIGTERM)
                nursery.cancel_scope.cancel()
                raise StartupError("a worker could not start (its log lines say why)")
            self.ready = True
            log.info("server_ready", workers=self.count, sip_port=sip, tls_port=tls)
            nursery.start_soon(self._keep_counters)
            if admin is not None and listeners:
                port = listeners[0].socket.getsockname()[1]
                log.info("admin_listener_started", address=admin[0], port=port)
                nursery.start_soon(serve_http, self._page, listeners)
            await self._signals(signals)
            nursery.cancel_scope.cancel()
        log.info("server_stopped", workers=self.count)
        return 0

    async def _keep(self, index: int, command: list[str], failed: trio.Event) -> None:
        """Run worker `index`; replace it if it dies while the server is up."""
        pause = RESTART_PAUSE
        while True:
            # A group of its own: a terminal's Ctrl-C (or a signal to our group) reaches the
            # supervisor alone, which forwards it once (twice would stop a drain at once).
            process = await trio.lowlevel.open_process(command, process_group=0)
            self.processes[index] = process
            started = trio.current_time()
            async with trio.open_nursery() as lifetime:  # the replacement's watch ends with it
                if index in self.down:
                    lifetime.start_soon(self._note_replaced, index, process, started)
                code = await process.wait()
                lifetime.cancel_scope.cancel()
            if self.stopping:
                return
            if not self.ready:
                failed.set()
                return
            lived = trio.current_time() - started
            pause = (
                RESTART_PAUSE if lived >= STABLE_AFTER else min(pause * 2, LONGEST_RESTART_PAUSE)
            )
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self.down[index] = f"exited ({how}); being replaced"
            self.restarts[index] += 1
            self._retire(index)
            # Its flows died with it: calls for its phones get 480 now, not a timeout.
            owner = owner_name(index, process.pid)
            removed = self.store.remove_fields(f"{owner}|".encode())
            self.store.execute([b"HDEL", COUNTS_KEY.encode(), owner.encode()])  # its calls too
            # Its admin socket would stop the replacement from listening.
            with contextlib.suppress(OSError):
                os.unlink(self.admin_sockets[index])
            log.error(
                "worker_exited",
                worker_index=index,
                returncode=code,
                action="restarted",
                restart_in=round(pause, 3),
                lived_seconds=round(lived, 3),
                bindings_removed=removed,
            )
            await trio.sleep(pause)

    async def _note_replaced(self, index: int, process: trio.Process, started: float) -> None:
        """Say when a replacement serves (its admin page answers), and clear its down mark."""
        with trio.move_on_after(READY_WITHIN):
            while process.returncode is None:
                if await _get(self.admin_sockets[index], "/healthz") is not None:
                    if self.processes[index] is process:
                        self.down.pop(index, None)
                    log.info(
                        "worker_replaced",
                        worker_index=index,
                        pid=process.pid,
                        seconds=round(trio.current_time() - started, 3),
                        restarts=self.restarts[index],
                    )
                    return
                await trio.sleep(0.05)

    def _retire(self, index: int) -> None:
        """A worker ended: what it had counted stays in the sums."""
        last = self._last_metrics[index]
        self._last_metrics[index] = None
        if last:
            monotonic = [f for f in last if f.type in MONOTONIC_TYPES]
            self._retired = [f for f in merge_families([self._retired, monotonic])]

    async def _keep_counters(self) -> None:
        while True:
            await trio.sleep(COUNTER_SCRAPE)
            await self._scrape()

    async def _scrape(self) -> list[list[Metric]]:
        """Every worker's metrics: what it answers now, else the last it answered."""
        processes = list(self.processes)
        answers = await self._ask_all("/metrics")
        out: list[list[Metric]] = []
        for index, answer in enumerate(answers):
            same = self.processes[index] is processes[index] and index not in self.down
            if answer is not None and answer[0] == 200 and same:  # not a dead worker's last
                self._last_metrics[index] = list(text_string_to_metric_families(answer[1].decode()))
            last = self._last_metrics[index]
            if last is not None:
                out.append(last)
        return out

    async def _ask_all(self, path: str) -> list[tuple[int, bytes] | None]:
        """Every worker's admin page at once (a scrape waits for the slowest, at most
        ASK_TIMEOUT); none from a worker that is down or being replaced."""
        answers: list[tuple[int, bytes] | None] = [None] * self.count

        async def ask(index: int) -> None:
            answers[index] = await _get(self.admin_sockets[index], path)

        async with trio.open_nursery() as nursery:
            for index in range(self.count):
                if index not in self.down:
                    nursery.start_soon(ask, index)
        return answers

    async def _first_failure(self, failed: trio.Event, scope: trio.CancelScope) -> None:
        await failed.wait()
        scope.cancel()

    async def _all_answer(self, scope: trio.CancelScope) -> None:
        for path in self.admin_sockets:
            while await _get(path, "/healthz") is None:
                await trio.sleep(0.05)
        scope.cancel()

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("workers_reloading", signal="SIGHUP")
                self._send(signal.SIGHUP)
                continue
            log.info("workers_stopping", signal=signal.Signals(signum).name)
            await self._stop_all(signal.SIGTERM)
            return

    def _send(self, signum: int) -> None:
        for process in self.processes:
            if process is not None and process.returncode is None:
                process.send_signal(signum)

    async def _stop_all(self, signum: int) -> None:
        """Drain every worker (each finishes its calls within server.shutdown_grace)."""
        self.stopping = True
        self._send(signum)
        with trio.move_on_after(self.config.server.shutdown_grace + 15):
            for process in self.processes:
                if process is not None:
                    await process.wait()
            return
        self._send(signal.SIGKILL)

    # --- /healthz and /metrics over every worker ------------------------------------------
    async def _page(self, path: bytes) -> Page:
        if path == b"/healthz":
            return await self._health()
        if path == b"/metrics":
            return 200, METRICS_TYPE, await self._metrics()
        return 404, "text/plain", b"/healthz or /metrics\n"

    async def _health(self) -> Page:
        answers = await self._ask_all("/healthz")
        workers: list[dict[str, Any]] = []
        for index, answer in enumerate(answers):
            down = self.down.get(index)
            if down is not None:
                workers.append({"index": index, "status": "down", "problems": [down]})
            elif answer is None:
                workers.append({"index": index, "status": "unreachable", "problems": ["no answer"]})
            else:
                workers.append({"index": index, **json.loads(answer[1] or b"{}")})
            workers[-1]["restarts"] = self.restarts[index]
        problems = [f"worker {w['index']}: {p}" for w in workers for p in w.get("problems", [])]
        first = next((w for w in workers if "certificate" in w), {})
        body = {
            "status": "ok" if not problems else "unhealthy",
            "problems": problems,
            "workers": len(workers),
            "workers_down": sorted(self.down),
            "listeners": first.get("listeners", []),
            "certificate": first.get("certificate"),
            "overloaded": any(w.get("overloaded") for w in workers),
            "calls_shed": sum(int(w.get("calls_shed", 0)) for w in workers),
            "udp_receive_dropped": sum(int(w.get("udp_receive_dropped", 0)) for w in workers),
            "tls_keylog_file": first.get("tls_keylog_file"),
            "peers_expiring": sorted({p for w in workers for p in w.get("peers_expiring", [])}),
            "registered_bindings": sum(int(w.get("registered_bindings", 0)) for w in workers),
            "cluster_store": _worst_store([w.get("cluster_store") for w in workers]),
            "per_worker": workers,
        }
        return (200 if not problems else 503), "application/json", json.dumps(body).encode()

    async def _metrics(self) -> bytes:
        live = await self._scrape()
        up = self.count - len(self.down)
        merged = merge_families([*live, [f for f in self._retired]])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(merged, up, sum(self.restarts)))
        return generate_latest(registry)


def _worst_store(states: list[Any]) -> dict[str, Any] | None:
    """The binding store as the workers see it: down if any of them finds it down."""
    known = [s for s in states if isinstance(s, dict)]
    if not known:
        return None
    return {"store": known[0].get("store"), "up": all(s.get("up") for s in known)}


def merge_metrics(texts: list[str]) -> list[Metric]:
    """The workers' metrics (Prometheus text) as one set."""
    return merge_families([list(text_string_to_metric_families(text)) for text in texts])


def merge_families(sets: list[list[Metric]]) -> list[Metric]:
    """Several workers' metrics as one set: counters and histograms summed, gauges summed
    or worst-of."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for one in sets:
        for family in one:
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif family.type in MONOTONIC_TYPES or family.name in SUMMED_GAUGES:
                    samples[key] += sample.value
                elif family.name in LOWEST_GAUGES:
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] = max(samples[key], sample.value)
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    return out


class _Fixed(Collector):
    def __init__(self, families: list[Metric], workers_up: int, restarts: int) -> None:
        self.families, self.workers_up, self.restarts = families, workers_up, restarts

    def collect(self) -> Iterator[Metric]:
        yield from self.families
        up = Metric(
            "sipserver_workers_up", "Worker processes running and not being replaced", "gauge"
        )
        up.add_sample("sipserver_workers_up", {}, self.workers_up)
        yield up
        restarts = Metric(
            "sipserver_worker_restarts", "Workers replaced after they died", "counter"
        )
        restarts.add_sample("sipserver_worker_restarts_total", {}, self.restarts)
        yield restarts


async def _get(socket_path: str, path: str) -> tuple[int, bytes] | None:
    """GET a worker's admin page: (status, body), or None when it does not answer."""
    try:
        with trio.fail_after(ASK_TIMEOUT):
            stream = await trio.open_unix_socket(socket_path)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: worker\r\n\r\n".encode())
                data = b""
                while chunk := await stream.receive_some(65536):
                    data += chunk
    except (OSError, trio.TooSlowError, trio.BrokenResourceError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1]), body
