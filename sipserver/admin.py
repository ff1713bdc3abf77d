"""The admin HTTP listener (off by default): /healthz and /metrics (Prometheus text).

Counting stays in plain counters owned by the server and the core; they become Prometheus
metric families only when scraped, through a custom collector.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sipserver.pki.certinfo import describe

if TYPE_CHECKING:
    from sipserver.server import Server

log = structlog.get_logger("sipserver")


@dataclass
class ServerStats:
    messages: Counter[tuple[str, str, str, str]] = field(
        default_factory=Counter
    )  # direction, transport, kind, label
    tls_handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)  # result, reason
    reloads: Counter[str] = field(default_factory=Counter)  # ok | failed

    def count_message(self, direction: str, transport: str, data: bytes) -> None:
        if data.startswith(b"SIP/2.0 "):
            self.messages[
                (direction, transport, "response", data[8:11].decode("ascii", "replace"))
            ] += 1
        elif data.strip(b"\r\n"):
            method = data.split(b" ", 1)[0][:20].decode("ascii", "replace")
            self.messages[(direction, transport, "request", method)] += 1


class _Collector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server, stats = self.server, self.server.stats
        connections = GaugeMetricFamily(
            "sipserver_connections_open", "Open TCP/TLS connections", labels=["transport"]
        )
        by_transport = Counter(c.flow.transport for c in server.connections.values())
        for transport in ("tcp", "tls"):
            connections.add_metric([transport], by_transport.get(transport, 0))
        yield connections
        handshakes = CounterMetricFamily(
            "sipserver_tls_handshakes",
            "TLS handshakes by result and reason",
            labels=["result", "reason"],
        )
        for (result, reason), value in stats.tls_handshakes.items():
            handshakes.add_metric([result, reason], value)
        yield handshakes
        messages = CounterMetricFamily(
            "sipserver_messages",
            "SIP messages by direction, transport, method or status",
            labels=["direction", "transport", "kind", "method_or_status"],
        )
        for labels, value in stats.messages.items():
            messages.add_metric(list(labels), value)
        yield messages
        calls = CounterMetricFamily(
            "sipserver_calls",
            "Calls by dial plan, security mode and outcome",
            labels=["dial_plan", "security", "outcome"],
        )
        for outcome_labels, value in server.core.call_outcomes.items():
            calls.add_metric(list(outcome_labels), value)
        yield calls
        targets = GaugeMetricFamily(
            "sipserver_target_up",
            "1 when a dial-plan target passes its health checks",
            labels=["target"],
        )
        for peer in server.core.health_targets:
            targets.add_metric([peer.name], 1 if server.core.health.is_up(peer) else 0)
        yield targets
        days = GaugeMetricFamily(
            "sipserver_certificate_days_to_expiry",
            "Days until not_after",
            labels=["role", "subject", "thumbprint_sha1"],
        )
        now = dt.datetime.now(dt.UTC)
        if server.credentials is not None:
            info = server.credentials.certificate.info
            days.add_metric(
                ["server", info.subject, info.thumbprint_sha1], round(info.days_left(now), 3)
            )
            for anchor in server.credentials.trust_anchors:
                anchor_info = describe(anchor)
                days.add_metric(
                    ["trust_anchor", anchor_info.subject, anchor_info.thumbprint_sha1],
                    round(anchor_info.days_left(now), 3),
                )
        yield days
        reloads = CounterMetricFamily(
            "sipserver_reloads", "Configuration reloads by result", labels=["result"]
        )
        for result in ("ok", "failed"):
            reloads.add_metric([result], stats.reloads.get(result, 0))
        yield reloads


def health(server: Server) -> tuple[int, dict[str, Any]]:
    problems: list[str] = []
    if not server.listeners:
        problems.append("no listener is open")
    if server.core.draining:
        problems.append("shutting down")
    certificate: dict[str, Any] | None = None
    if server.credentials is not None:
        info = server.credentials.certificate.info
        now = dt.datetime.now(dt.UTC)
        certificate = {
            "thumbprint_sha1": info.thumbprint_sha1,
            "not_after": info.not_after.isoformat(),
            "days_left": round(info.days_left(now), 1),
        }
        if not info.valid_at(now):
            problems.append("the server certificate is not valid now")
    elif "tls" in server.config.server.transports:
        problems.append("no server certificate is in use")
    body = {
        "status": "ok" if not problems else "unhealthy",
        "problems": problems,
        "listeners": [f"{item.transport}:{item.address}:{item.port}" for item in server.listeners],
        "certificate": certificate,
    }
    return (200 if not problems else 503), body


async def serve_admin(
    server: Server,
    host: str,
    port: int,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(server))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(5):
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
                elif path == b"/healthz":
                    status, payload = health(server)
                    ctype, body = "application/json", json.dumps(payload).encode() + b"\n"
                elif path == b"/metrics":
                    status, ctype, body = (
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        generate_latest(registry),
                    )
                else:
                    status, ctype, body = 404, "text/plain", b"/healthz or /metrics\n"
                reason = {
                    200: "OK",
                    404: "Not Found",
                    405: "Method Not Allowed",
                    503: "Service Unavailable",
                }[status]
                head = (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                await stream.send_all(head + body)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("admin_listener_started", address=host, port=bound)
    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)
