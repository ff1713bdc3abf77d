"""The admin HTTP listener (off by default): /healthz and /metrics (Prometheus text).

It reads a frozen `StatsSnapshot` taken when a request comes in; the metric families are
built from it through a custom collector. It knows nothing of the server's insides.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sipserver.server.snapshot import ClusterState, StatsSnapshot
from sipserver.transport.listeners import StartupError

log = structlog.get_logger("sipserver")
Snapshot = Callable[[], StatsSnapshot]
REQUEST_TIMEOUT = 5.0  # seconds a scraper gets to send its request


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: tuple[str, ...],
    values: Mapping[Any, float],  # label values (a tuple) -> sample
) -> Metric:
    """One metric family from its samples, keyed by their label values."""
    family = kind(name, documentation, labels=list(labels))
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


class _Collector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        yield _family(
            gauge,
            "sipserver_connections_open",
            "Open TCP/TLS connections",
            ("transport",),
            {(t,): snap.connections.get(t, 0) for t in ("tcp", "tls")},
        )
        yield _family(
            counter,
            "sipserver_tls_handshakes",
            "TLS handshakes by result and reason",
            ("result", "reason"),
            snap.tls_handshakes,
        )
        yield _family(
            counter,
            "sipserver_peer_tls_handshakes",
            "Accepted TLS handshakes by peer, full or resumed (a peer that resumes saves a"
            " full handshake's CPU)",
            ("peer", "session"),
            snap.peer_handshakes,
        )
        yield _family(
            counter,
            "sipserver_refusals",
            "Requests and connections refused, by peer (empty: a source that is no peer) and"
            " reason (an event name or TLS refusal code)",
            ("peer", "reason"),
            snap.refusals,
        )
        setup = HistogramMetricFamily(
            "sipserver_call_setup_seconds",
            "Seconds from a call's INVITE to its final answer, by dial plan",
            labels=["dial_plan"],
        )
        for plan, histogram in snap.setup_seconds.items():
            setup.add_metric([plan], histogram.cumulative(), histogram.total)
        yield setup
        yield _family(
            counter,
            "sipserver_messages",
            "SIP messages by direction, transport, method or status",
            ("direction", "transport", "kind", "method_or_status"),
            snap.messages,
        )
        yield _family(
            counter,
            "sipserver_calls",
            "Calls by the calling peer, dial plan, security mode and outcome",
            ("peer", "dial_plan", "security", "outcome"),
            snap.calls,
        )
        yield _family(
            gauge,
            "sipserver_target_up",
            "1 when a dial-plan target passes its health checks",
            ("target",),
            {(name,): 1 if up else 0 for name, up in snap.targets_up},
        )
        yield _family(
            gauge,
            "sipserver_certificate_days_to_expiry",
            "Days until not_after",
            ("role", "subject", "thumbprint_sha1"),
            {
                (cert.role, cert.info.subject, cert.info.thumbprint_sha1): round(
                    cert.info.days_left(snap.taken_at), 3
                )
                for cert in snap.certificates
            },
        )
        yield _family(
            gauge,
            "sipserver_peer_certificate_days_to_expiry",
            "Days until the last certificate a peer presented (or its trust anchor) expires",
            ("peer",),
            {(peer,): days_left for peer, days_left in snap.peer_days_left},
        )
        yield _family(
            gauge,
            "sipserver_overloaded",
            "1 while new calls are refused with 503 because of load",
            (),
            {(): 1 if snap.overloaded else 0},
        )
        yield _family(
            gauge,
            "sipserver_event_loop_busy_ratio",
            "Share of the last window the event loop worked",
            (),
            {(): snap.busy},
        )
        yield _family(
            counter,
            "sipserver_calls_shed",
            "New calls refused with 503 because of overload",
            (),
            {(): snap.calls_shed},
        )
        yield _family(
            gauge,
            "sipserver_peer_active_calls",
            "Calls in progress by calling peer (INVITE to BYE or failure), for max_calls",
            ("peer",),
            {(name,): value for name, value in snap.active_by_peer.items()},
        )
        yield _family(
            gauge,
            "sipserver_dial_plan_active_calls",
            "Calls in progress by dial plan, for its max_calls",
            ("dial_plan",),
            {(name,): value for name, value in snap.active_by_plan.items()},
        )
        yield _family(
            counter,
            "sipserver_call_limit_refusals",
            "New calls refused with 503 by a limit: peer_max_calls, peer_max_call_rate,"
            " plan_max_calls or server_max_calls, with the peer's or plan's name",
            ("limit", "name"),
            snap.limit_refusals,
        )
        yield _family(
            counter,
            "sipserver_connections_evicted",
            "Connections without a proven peer closed to admit a newer one "
            "(limits.max_unverified_connections full)",
            (),
            {(): snap.connections_evicted},
        )
        yield _family(
            counter,
            "sipserver_udp_receive_dropped",
            "Datagrams the kernel dropped because our UDP receive queue was full",
            (),
            {(): snap.udp_receive_dropped},
        )
        yield _family(
            counter,
            "sipserver_capture",
            "SIP messages mirrored to the HEP collector ([capture] hep), by result",
            ("result",),
            {("sent",): snap.capture_sent, ("dropped",): snap.capture_dropped},
        )
        yield _family(
            gauge,
            "sipserver_registered_bindings",
            "Softphone bindings (registered contacts) now, by the transport of their flow",
            ("transport",),
            {(t,): snap.bindings.get(t, 0) for t in ("udp", "tcp", "tls")},
        )
        changes = ("added", "refreshed", "replaced", "removed", "expired")
        yield _family(
            counter,
            "sipserver_registrations",
            "Softphone bindings added, refreshed, replaced, removed and expired",
            ("change",),
            {(change,): snap.registrations.get(change, 0) for change in changes},
        )
        if snap.cluster is not None:
            yield from _cluster_metrics(snap.cluster)
        yield _family(
            counter,
            "sipserver_reloads",
            "Configuration reloads by result",
            ("result",),
            {(result,): snap.reloads.get(result, 0) for result in ("ok", "failed")},
        )


def _cluster_metrics(cluster: ClusterState) -> Iterator[Metric]:
    counter, gauge = CounterMetricFamily, GaugeMetricFamily
    yield _family(
        gauge,
        "sipserver_cluster_store_up",
        "1 while the shared binding store answers, else 0",
        (),
        {(): 1.0 if cluster.up else 0.0},
    )
    yield _family(
        counter,
        "sipserver_cluster_store_errors",
        "Exchanges with the binding store that failed",
        (),
        {(): cluster.errors},
    )
    counted = dict(cluster.lookups)
    yield _family(
        counter,
        "sipserver_cluster_lookups",
        "Look-ups of other processes' bindings for a call, by result",
        ("result",),
        {(result,): counted.get(result, 0) for result in ("found", "none", "failed")},
    )
    yield _family(
        counter,
        "sipserver_cluster_bindings_dropped",
        "Bindings of processes that were gone, removed",
        (),
        {(): cluster.dropped},
    )
    yield _family(
        counter,
        "sipserver_cluster_republished",
        "Times every binding we hold was published (at start, and when the store lost them)",
        (),
        {(): cluster.republished},
    )


def health(snap: StatsSnapshot) -> tuple[int, dict[str, Any]]:
    problems: list[str] = []
    if not snap.listeners:
        problems.append("no listener is open")
    if snap.draining:
        problems.append("shutting down")
    certificate: dict[str, Any] | None = None
    ours = next((c.info for c in snap.certificates if c.role == "server"), None)
    if ours is not None:
        certificate = {
            "thumbprint_sha1": ours.thumbprint_sha1,
            "not_after": ours.not_after.isoformat(),
            "days_left": round(ours.days_left(snap.taken_at), 1),
        }
        if not ours.valid_at(snap.taken_at):
            problems.append("the server certificate is not valid now")
    elif snap.tls_expected:
        problems.append("no server certificate is in use")
    body = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        "listeners": list(snap.listeners),
        "certificate": certificate,
        # Shedding load is the server working as designed: still healthy, but say so.
        "overloaded": snap.overloaded,
        "calls_shed": snap.calls_shed,
        "udp_receive_dropped": snap.udp_receive_dropped,
        # Whoever reads this file can decrypt the calls: say so for as long as it is on.
        "tls_keylog_file": snap.tls_keylog_file,
        # A peer certificate about to expire is the peer's problem to fix: still 200.
        "peers_expiring": list(snap.peers_expiring),
        "registered_bindings": sum(snap.bindings.values()),
    }
    if snap.cluster is not None:
        # A store that is down costs calls to phones on other processes, not ours: still 200.
        body["cluster_store"] = {"store": snap.cluster.store, "up": snap.cluster.up}
    return (200 if not problems else 503), body


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


Page = tuple[int, str, bytes]  # status, content type, body
Pages = Callable[[bytes], Awaitable[Page]]
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def snapshot_pages(snapshot: Snapshot) -> Pages:
    """/healthz and /metrics from a snapshot taken per request."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))

    async def pages(path: bytes) -> Page:
        if path == b"/healthz":
            status, payload = health(snapshot())
            return status, "application/json", json.dumps(payload).encode() + b"\n"
        if path == b"/metrics":
            return 200, METRICS_TYPE, generate_latest(registry)
        return 404, "text/plain", b"/healthz or /metrics\n"

    return pages


async def serve_admin(
    pages: Pages,
    host: str,
    port: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The admin listener on host:port (admin.address)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on admin.address {host}:{port}: {exc.strerror or exc}",
            "admin.address",
        ) from exc
    bound = listeners[0].socket.getsockname()[1]
    log.info("admin_listener_started", address=host, port=bound)
    task_status.started(bound)
    await serve_http(pages, listeners)


async def serve_admin_socket(
    pages: Pages,
    path: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The admin pages on a Unix socket: a worker's, for its supervisor (no port to pick,
    so no other listener can take it first). A socket file left by a worker that died
    before it could remove it is ours to replace: the folder is the supervisor's own."""
    _remove_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    log.info("admin_listener_started", socket=path)
    task_status.started()
    await serve_http(pages, [trio.SocketListener(sock)])


def _remove_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


async def serve_http(pages: Pages, listeners: list[trio.SocketListener]) -> None:
    """A tiny HTTP/1.1 server for GETs: one request per connection, bounded in time."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                method, _, rest = data.partition(b" ")
                path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
                if method != b"GET":
                    status, ctype, body = 405, "text/plain", b"GET only\n"
                else:
                    status, ctype, body = await pages(path)
                head = (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                await stream.send_all(head + body)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)
