"""Wires the pure core to trio: listeners, connections, timers, signals, reload.

One nursery owns every task. Every wait on a peer is bounded: handshakes by
tls.handshake_timeout, reads by limits.idle_timeout, writes by limits.send_timeout.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio
from OpenSSL import SSL

from sipserver.admin import ServerStats, serve_admin
from sipserver.certstore import (
    CertificateSetupError,
    ServerCredentials,
    load_candidates,
    pkcs12_password,
    prepare_credentials,
)
from sipserver.config import ConfigError, load_config
from sipserver.core import Flow, SipCore, Transmit
from sipserver.pki.certinfo import describe
from sipserver.pki.expiry import DailyOnce, expiry_notice
from sipserver.pki.select import choose_certificate
from sipserver.settings import Config
from sipserver.sip.framing import FramingError
from sipserver.transport.limits import ConnectionTable
from sipserver.transport.streams import StreamConnection, next_connection_id
from sipserver.transport.tls_accept import TlsAccepted, accept_tls, connect_tls
from sipserver.transport.tls_context import build_client_context, build_server_context
from sipserver.transport.udp import open_udp_socket

log = structlog.get_logger("sipserver")


class StartupError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Listener:
    transport: str
    address: str
    port: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _addr(address: tuple[str, int]) -> str:
    return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"


class Server:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        overrides: Callable[[Config], Config] = lambda c: c,
    ) -> None:
        self.config = config
        self._config_path = config_path
        self._overrides = overrides
        self.core = SipCore(config)
        self.connections: dict[int, StreamConnection] = {}
        self.connection_table = ConnectionTable(
            config.limits.max_connections, config.limits.max_connections_per_address
        )
        self.listeners: list[Listener] = []
        self._udp_sockets: dict[tuple[str, int], trio.socket.SocketType] = {}
        self._timer_wakeup = trio.Event()
        self._timer_armed_for: float | None = None  # the deadline the timer task sleeps until
        self.credentials: ServerCredentials | None = None
        self._tls_context: SSL.Context | None = None
        self._client_tls_context: SSL.Context | None = None
        self._nursery: trio.Nursery | None = None
        self._accept_scopes: list[trio.CancelScope] = []
        self._socket_listeners: list[trio.SocketListener] = []
        # Outbound legs: open connections and what waits for a connection being opened.
        self._outbound: dict[tuple[str, str, int], StreamConnection] = {}
        self._daily = DailyOnce()
        self.stats = ServerStats()
        self._skips_reported: set[tuple[str, str, str]] = (
            set()
        )  # each skipped certificate is logged once
        # Issuer (RFC 4514) -> peers seen with certificates from it, to say who an expiring CA affects.
        self._peers_by_issuer: dict[str, set[str]] = {}
        self._pending: dict[tuple[str, str, int], list[Transmit]] = {}

    # --- lifecycle ---------------------------------------------------------------------
    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        cfg = self.config
        log.info("server_starting", fqdn=cfg.server.fqdn, config=cfg.source, peers=len(cfg.peers))
        if "tls" in cfg.server.transports:
            try:
                self._install_credentials(prepare_credentials(cfg, _now(), self._skips_reported))
            except CertificateSetupError as exc:
                raise StartupError(str(exc)) from exc
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._open_listeners(nursery)
            self.core.set_ports(
                next(
                    (item.port for item in self.listeners if item.transport != "tls"),
                    cfg.server.sip_port,
                ),
                next(
                    (item.port for item in self.listeners if item.transport == "tls"),
                    cfg.server.tls_port,
                ),
            )
            nursery.start_soon(self._timer_loop)
            if cfg.server.watch_interval > 0:
                # The first snapshot is taken before we say we are ready, so that no change
                # made after server_ready can be missed.
                nursery.start_soon(self._watch_loop, self._watched_files())
            nursery.start_soon(self._certificate_watch)
            nursery.start_soon(self._health_loop)
            if handle_signals:
                await nursery.start(self._signal_loop, nursery.cancel_scope)
            log.info(
                "server_ready",
                fqdn=cfg.server.fqdn,
                listeners=[
                    f"{item.transport}:{_addr((item.address, item.port))}"
                    for item in self.listeners
                ],
                peers=[p.name for p in cfg.peers],
            )
            admin = cfg.admin.host_port
            if admin is not None:
                await nursery.start(serve_admin, self, admin[0], admin[1])
            task_status.started(list(self.listeners))
        log.info("server_stopped")

    def _install_credentials(self, credentials: ServerCredentials) -> None:
        context = build_server_context(
            credentials.certificate, credentials.trust_anchors, self.config.tls.min_version
        )
        client = build_client_context(
            credentials.certificate, credentials.trust_anchors, self.config.tls.min_version
        )
        self.credentials = credentials
        # New connections use these; established ones keep theirs.
        self._tls_context, self._client_tls_context = context, client
        self.core.our_thumbprint_sha1 = credentials.certificate.info.thumbprint_sha1

    async def _open_listeners(self, nursery: trio.Nursery) -> None:
        cfg = self.config.server
        sip_port, tls_port = cfg.sip_port, cfg.tls_port
        for transport in ("udp", "tcp", "tls"):
            if transport not in cfg.transports:
                continue
            for address in cfg.addresses:
                port = tls_port if transport == "tls" else sip_port
                try:
                    bound = await self._open_listener(nursery, transport, address, port)
                except OSError as exc:
                    if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) and address in (
                        "::",
                        "0.0.0.0",
                    ):
                        log.warning(
                            "listener_unavailable",
                            transport=transport,
                            address=address,
                            port=port,
                            reason=exc.strerror,
                        )
                        continue
                    raise StartupError(_bind_error(transport, address, port, exc)) from exc
                # Port 0 picks a free port once; UDP and TCP then share it, like 5060 does.
                if transport == "tls" and tls_port == 0:
                    tls_port = bound
                elif transport != "tls" and sip_port == 0:
                    sip_port = bound
        if not self.listeners:
            raise StartupError("no listener could be opened")

    async def _open_listener(
        self, nursery: trio.Nursery, transport: str, address: str, port: int
    ) -> int:
        if transport == "udp":
            sock = await open_udp_socket(address, port)
            local = sock.getsockname()[:2]
            self._udp_sockets[local] = sock
            nursery.start_soon(self._serve_udp, sock, local)
        else:
            listeners = await trio.open_tcp_listeners(port, host=address, backlog=1024)
            local = listeners[0].socket.getsockname()[:2]
            handler = self._serve_tls if transport == "tls" else self._serve_tcp
            self._socket_listeners.extend(listeners)
            await nursery.start(self._accept, handler, listeners)
        self.listeners.append(Listener(transport, local[0], local[1]))
        log.info("listener_started", transport=transport, address=local[0], port=local[1])
        return int(local[1])

    async def _accept(
        self,
        handler: Any,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept loops run under one cancel scope so that a drain stops them while the
        connections (started in the main nursery) carry on."""
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._accept_scopes.append(scope)
        with scope:
            await trio.serve_listeners(
                handler, listeners, handler_nursery=self._nursery, task_status=task_status
            )

    async def _signal_loop(
        self,
        cancel_scope: trio.CancelScope,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.reload()
                elif self.core.draining:
                    log.warning(
                        "server_stopping_now",
                        signal=name,
                        reason="second stop signal during the drain",
                    )
                    cancel_scope.cancel()
                    return
                else:
                    assert self._nursery is not None
                    self._nursery.start_soon(self.drain, cancel_scope, name)

    async def drain(self, cancel_scope: trio.CancelScope, why: str) -> None:
        """Stop taking new connections and new calls at once (503 + Retry-After), let the
        transactions in flight finish within server.shutdown_grace, then stop."""
        grace = self.config.server.shutdown_grace
        log.info("server_draining", signal=why, grace_seconds=grace, busy=self.core.busy())
        self.core.draining = True
        for scope in self._accept_scopes:
            scope.cancel()
        for listener in self._socket_listeners:
            with trio.move_on_after(1, shield=True):
                await listener.aclose()
        started = time.monotonic()
        with trio.move_on_after(grace):
            while self.core.busy():
                await trio.sleep(0.05)
        left = self.core.busy()
        (log.info if not left else log.warning)(
            "server_drained" if not left else "server_grace_expired",
            seconds=round(time.monotonic() - started, 3),
            unfinished=left,
        )
        cancel_scope.cancel()

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read config, certificates, trust anchors and CRLs, and swap them in at once;
        on any error keep what is running. Established connections and calls carry on."""
        try:
            new = (
                self._overrides(load_config(self._config_path))
                if self._config_path
                else self.config
            )
            credentials = (
                prepare_credentials(new, _now(), self._skips_reported)
                if "tls" in new.server.transports
                else None
            )
        except (ConfigError, CertificateSetupError) as exc:
            log.error("config_reload_failed", error=str(exc), kept=self.config.source)
            self.stats.reloads["failed"] += 1
            return False
        old = self.config
        if (
            new.server.addresses,
            new.server.sip_port,
            new.server.tls_port,
            new.server.transports,
        ) != (
            old.server.addresses,
            old.server.sip_port,
            old.server.tls_port,
            old.server.transports,
        ):
            log.warning(
                "config_reload_partial",
                reason="listen addresses, ports and transports change only on restart",
            )
        self.config = new
        self.core.configure(new)
        self.connection_table.max_total = new.limits.max_connections
        self.connection_table.max_per_address = new.limits.max_connections_per_address
        if credentials is not None:
            self._install_credentials(credentials)
        log.info("config_reloaded", config=new.source, peers=len(new.peers), why=why)
        self.stats.reloads["ok"] += 1
        return True

    def _watched_files(self) -> dict[str, tuple[int, int]]:
        """Modification time and size of the config file and everything in the
        certificate and trust folders."""
        paths: list[Path] = [self._config_path] if self._config_path else []
        for folder in (self.config.tls.certificate_dir, self.config.tls.trust_dir):
            if folder.is_dir():
                paths.extend(p for p in folder.iterdir() if p.is_file())
        snapshot: dict[str, tuple[int, int]] = {}
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            snapshot[str(path)] = (stat.st_mtime_ns, stat.st_size)
        return snapshot

    async def _watch_loop(self, known: dict[str, tuple[int, int]]) -> None:
        """Reload when watched files change, once they have been quiet for
        server.reload_debounce seconds (editors and ACME clients write in steps)."""
        while True:
            await trio.sleep(self.config.server.watch_interval)
            current = await trio.to_thread.run_sync(self._watched_files)
            if current == known:
                continue
            while True:  # debounce: wait until a snapshot repeats
                await trio.sleep(self.config.server.reload_debounce)
                settled = await trio.to_thread.run_sync(self._watched_files)
                if settled == current:
                    break
                current = settled
            changed = sorted(set(current.items()) ^ set(known.items()))
            names = sorted({Path(path).name for path, _ in changed})
            known = current
            self.reload(why=f"files changed: {', '.join(names)}")

    # --- timers ------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            self._timer_armed_for = deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_wakeup.wait()
            self._timer_wakeup = trio.Event()
            await self._dispatch(self.core.handle_timers(trio.current_time()))

    async def _certificate_watch(self) -> None:
        """Hourly: expiry warnings (each once a UTC day) and a switch to a better or
        still-valid certificate when one is there."""
        while True:
            self.check_certificates(_now())
            await trio.sleep(self.config.tls.certificate_check_interval)

    def check_certificates(self, now: dt.datetime) -> None:
        credentials = self.credentials
        if credentials is None:
            return
        ours = credentials.certificate
        notice = expiry_notice(ours.info.not_after, now)
        if notice is not None and self._daily.due(f"server:{ours.info.thumbprint_sha1}", now):
            if notice.expired:
                log.error(
                    "server_certificate_expired",
                    days_since=notice.days,
                    path=ours.path,
                    **ours.info.log_fields(),
                )
            else:
                log.warning(
                    "server_certificate_expiring",
                    days_left=notice.days,
                    path=ours.path,
                    **ours.info.log_fields(),
                )
        for anchor in credentials.trust_anchors:
            info = describe(anchor)
            notice = expiry_notice(info.not_after, now)
            if notice is None or not self._daily.due(f"anchor:{info.thumbprint_sha1}", now):
                continue
            affected = sorted(self._peers_by_issuer.get(info.subject, set()))
            fields = {
                "affected_peers": affected,
                "subject": info.subject,
                "serial": info.serial,
                "thumbprint_sha1": info.thumbprint_sha1,
                "not_after": info.not_after.isoformat(),
            }
            if notice.expired:
                log.error("trust_anchor_expired", days_since=notice.days, **fields)
            else:
                log.warning("trust_anchor_expiring", days_left=notice.days, **fields)
        self._reselect(now)

    def _reselect(self, now: dt.datetime) -> None:
        """Switch when the certificate in use expired or a better one appeared."""
        assert self.credentials is not None
        try:
            candidates, _ = load_candidates(
                self.config.tls.certificate_dir, pkcs12_password(self.config)
            )
        except CertificateSetupError as exc:
            log.error("server_certificate_change_failed", error=str(exc))
            return
        selection = choose_certificate(candidates, self.config.server.fqdn, now)
        current = self.credentials.certificate.info.thumbprint_sha1
        if selection.chosen is None or selection.chosen.info.thumbprint_sha1 == current:
            if selection.chosen is None and not self.credentials.certificate.info.valid_at(now):
                log.error(
                    "server_certificate_unusable",
                    reason="the certificate in use is no longer valid and no other is usable",
                    path=self.credentials.certificate.path,
                )
            return
        try:
            credentials = prepare_credentials(self.config, now, self._skips_reported)
        except CertificateSetupError as exc:
            log.error("server_certificate_change_failed", error=str(exc))
            return
        self._install_credentials(credentials)
        log.info(
            "server_certificate_changed",
            previous_thumbprint_sha1=current,
            thumbprint_sha1=credentials.certificate.info.thumbprint_sha1,
            path=credentials.certificate.path,
        )

    def _note_issuer(self, peer: str, issuer: str) -> None:
        self._peers_by_issuer.setdefault(issuer, set()).add(peer)

    async def _health_loop(self) -> None:
        """Drives OPTIONS pings to dial-plan targets; the core decides what is due."""
        while True:
            await self._dispatch(self.core.health_tick(trio.current_time()))
            await trio.sleep(0.25)

    async def _dispatch(
        self, transmits: list[Transmit], origin: StreamConnection | None = None
    ) -> None:
        """Send what the core produced. Answers to `origin` (the connection whose reader
        is calling) wait for queue room; anything for other connections never waits."""
        for transmit in transmits:
            flow = transmit.flow
            if transmit.data:
                self.stats.count_message("out", flow.transport, transmit.data)
            if flow.transport == "udp":
                sock = self._udp_sockets.get(flow.local) or self._udp_socket_for(flow.remote[0])
                if sock is None:
                    log.warning(
                        "udp_send_failed",
                        remote=_addr(flow.remote),
                        reason="no UDP socket of that family",
                    )
                    continue
                try:
                    await sock.sendto(transmit.data, flow.remote)
                except OSError as exc:
                    log.warning("udp_send_failed", remote=_addr(flow.remote), reason=exc.strerror)
                continue
            if flow.connection_id is None:
                self._send_outbound(transmit)
                continue
            connection = self.connections.get(flow.connection_id)
            if connection is None:
                log.info(
                    "transmit_dropped",
                    reason="connection closed",
                    remote=_addr(flow.remote),
                    transport=flow.transport,
                )
                continue
            if connection is origin:
                await connection.send(transmit, self.config.limits.send_timeout)
            else:
                connection.queue(transmit)
        # Wake the timer task only when the core now needs it earlier than it planned.
        deadline = self.core.next_deadline()
        if deadline is not None and (
            self._timer_armed_for is None or deadline < self._timer_armed_for
        ):
            self._timer_wakeup.set()

    def _udp_socket_for(self, host: str) -> trio.socket.SocketType | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return next((s for s in self._udp_sockets.values() if s.family == family), None)

    # --- outbound legs ---------------------------------------------------------------------
    def _send_outbound(self, transmit: Transmit) -> None:
        flow = transmit.flow
        key = (flow.transport, flow.remote[0], flow.remote[1])
        connection = self._outbound.get(key)
        if connection is not None:
            connection.queue(transmit)
        elif key in self._pending:
            self._pending[key].append(transmit)
        else:
            self._pending[key] = [transmit]
            assert self._nursery is not None
            self._nursery.start_soon(self._connect_out, flow, key)

    async def _connect_out(self, flow: Flow, key: tuple[str, str, int]) -> None:
        target = self.core.peers.by_fqdn(flow.server_name) if flow.server_name else None
        structlog.contextvars.bind_contextvars(
            transport=flow.transport,
            remote=_addr(flow.remote),
            target=target.name if target else None,
        )
        started = time.monotonic()
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.config.tls.handshake_timeout):
                sock_stream = await trio.open_tcp_stream(flow.remote[0], flow.remote[1])
            stream = sock_stream
            if flow.transport == "tls":
                assert self._client_tls_context is not None and target is not None
                result = await connect_tls(
                    sock_stream,
                    self._client_tls_context,
                    self.config.tls.handshake_timeout,
                    target,
                    self.credentials.revocation if self.credentials else None,
                )
                if not isinstance(result, TlsAccepted):
                    cert_fields = (
                        result.certificate.log_fields("target_cert_") if result.certificate else {}
                    )
                    raise _OutboundRefused(result.reason, result.detail, cert_fields)
                stream = result.stream
                self.core.proxy.note_target_certificate(flow, result.certificate)
                self._note_issuer(target.name, result.certificate.issuer)
                log.info(
                    "tls_target_accepted",
                    target_fqdn=target.fqdn,
                    tls_version=result.tls_version,
                    cipher=result.cipher,
                    **result.certificate.log_fields("target_cert_"),
                )
        except (OSError, trio.TooSlowError, _OutboundRefused) as exc:
            reason = _outbound_reason(exc)
            fields = exc.fields if isinstance(exc, _OutboundRefused) else {}
            log.warning(
                "outbound_connection_failed",
                reason=reason,
                seconds=round(time.monotonic() - started, 3),
                **fields,
            )
            self._pending.pop(key, None)
            if stream is not None:
                await trio.aclose_forcefully(stream)
            await self._dispatch(self.core.transport_failed(flow, reason, trio.current_time()))
            return
        local = sock_stream.socket.getsockname()[:2]
        connection_id = next_connection_id()
        structlog.contextvars.bind_contextvars(connection_id=connection_id)
        connection = StreamConnection(
            stream,
            Flow(flow.transport, local, flow.remote, connection_id, flow.server_name),
            target,
            self.config.limits.send_queue_bytes,
        )
        self.connections[connection_id] = connection
        self._outbound[key] = connection
        log.info("outbound_connection_opened", seconds=round(time.monotonic() - started, 3))
        for waiting in self._pending.pop(key, []):
            connection.queue(waiting)
        try:
            limits = self.config.limits
            await connection.run(
                self.core.limits,
                limits.idle_timeout,
                limits.send_timeout,
                self._stream_message,
                self._framing_lost,
                keepalive_interval=limits.keepalive_interval,
            )
        finally:
            self.connections.pop(connection_id, None)
            self._outbound.pop(key, None)
            log.info(
                "connection_closed", reason=connection.close_reason, messages=connection.messages_in
            )
            with trio.move_on_after(1, shield=True):
                await connection.stream.aclose()
            now = trio.current_time()
            await self._dispatch(
                self.core.transport_failed(flow, connection.close_reason, now)
                + self.core.transport_failed(connection.flow, connection.close_reason, now)
            )

    # --- UDP ---------------------------------------------------------------------------
    async def _serve_udp(self, sock: trio.socket.SocketType, local: tuple[str, int]) -> None:
        while True:
            limit = self.config.limits.max_message_bytes
            try:
                data, address = await sock.recvfrom(limit + 1)
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp_receive_error", reason=exc.strerror)
                continue
            remote = (address[0], address[1])
            if len(data) > limit:
                log.warning(
                    "sip_datagram_too_large",
                    remote=_addr(remote),
                    limit=limit,
                    reason="limits.max_message_bytes",
                )
                continue
            flow = Flow("udp", local, remote)
            self.stats.count_message("in", "udp", data)
            try:
                transmits = self.core.receive_datagram(data, flow, trio.current_time())
            except Exception:
                log.exception("internal_error", transport="udp", remote=_addr(remote))
                continue
            await self._dispatch(transmits)

    # --- TCP and TLS -------------------------------------------------------------------
    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        await self._serve_stream(stream, "tcp")

    async def _serve_tls(self, stream: trio.SocketStream) -> None:
        await self._serve_stream(stream, "tls")

    async def _serve_stream(self, stream: trio.SocketStream, transport: str) -> None:
        try:
            remote = stream.socket.getpeername()[:2]
            local = stream.socket.getsockname()[:2]
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        refusal = self.connection_table.admit(remote[0])
        if refusal is not None:
            log.warning(
                "connection_refused", transport=transport, remote=_addr(remote), reason=refusal
            )
            await trio.aclose_forcefully(stream)
            return
        connection_id = next_connection_id()
        structlog.contextvars.bind_contextvars(
            transport=transport, remote=_addr(remote), connection_id=connection_id
        )
        started = time.monotonic()
        connection: StreamConnection | None = None
        try:
            tls_peer = None
            peer_cert = None
            active: trio.abc.Stream = stream
            if transport == "tls":
                accepted = await self._tls_handshake(stream)
                if accepted is None:
                    return
                active, tls_peer = accepted.stream, accepted.peer
                peer_cert = accepted.certificate
            else:
                log.info("connection_opened")
            connection = StreamConnection(
                active,
                Flow(transport, local, remote, connection_id),
                tls_peer,
                self.config.limits.send_queue_bytes,
            )
            connection.peer_cert = peer_cert
            self.connections[connection_id] = connection
            limits = self.config.limits
            await connection.run(
                self.core.limits,
                limits.idle_timeout,
                limits.send_timeout,
                self._stream_message,
                self._framing_lost,
            )
        except Exception:
            log.exception("internal_error")
        finally:
            self.connections.pop(connection_id, None)
            self.connection_table.release(remote[0])
            if connection is not None:
                with trio.move_on_after(1, shield=True):
                    await self._dispatch(
                        self.core.transport_failed(
                            connection.flow, connection.close_reason, trio.current_time()
                        )
                    )
                log.info(
                    "connection_closed",
                    reason=connection.close_reason,
                    messages=connection.messages_in,
                    seconds=round(time.monotonic() - started, 3),
                )
                with trio.move_on_after(1, shield=True):
                    await connection.stream.aclose()
            else:
                await trio.aclose_forcefully(stream)

    async def _tls_handshake(self, stream: trio.SocketStream) -> TlsAccepted | None:
        assert self._tls_context is not None and self.credentials is not None
        ours = self.credentials.certificate.info
        result = await accept_tls(
            stream,
            self._tls_context,
            self.config.tls.handshake_timeout,
            self.config.peers,
            self.credentials.revocation,
        )
        self.stats.tls_handshakes[
            ("accepted", "") if isinstance(result, TlsAccepted) else ("refused", result.reason)
        ] += 1
        if not isinstance(result, TlsAccepted):
            cert_fields = result.certificate.log_fields("peer_cert_") if result.certificate else {}
            log.warning(
                "tls_peer_refused",
                reason=result.reason,
                detail=result.detail,
                **result.fields,
                **cert_fields,
            )
            if result.stream is not None:
                with trio.move_on_after(1, shield=True):
                    await result.stream.aclose()
            return None
        structlog.contextvars.bind_contextvars(
            peer=result.peer.name,
            peer_fqdn=result.peer.fqdn,
            peer_cert_thumbprint_sha256=result.certificate.thumbprint_sha256,
            peer_cert_issuer=result.certificate.issuer,
            peer_cert_serial=result.certificate.serial,
            our_thumbprint_sha1=ours.thumbprint_sha1,
        )
        self._note_issuer(result.peer.name, result.certificate.issuer)
        log.info(
            "tls_peer_accepted",
            identity_source=result.identity_source,
            tls_version=result.tls_version,
            cipher=result.cipher,
            our_thumbprint_sha1=ours.thumbprint_sha1,
            our_thumbprint_sha256=ours.thumbprint_sha256,
            **result.certificate.log_fields("peer_cert_"),
        )
        return result

    async def _stream_message(self, connection: StreamConnection, data: bytes) -> None:
        self.stats.count_message("in", connection.flow.transport, data)
        try:
            transmits = self.core.receive_stream_message(
                data,
                connection.flow,
                connection.tls_peer,
                trio.current_time(),
                connection.peer_cert,
            )
        except Exception:
            log.exception("internal_error")
            return
        await self._dispatch(transmits, origin=connection)

    async def _framing_lost(self, connection: StreamConnection, error: FramingError) -> None:
        await self._dispatch(self.core.framing_lost(error, connection.flow), origin=connection)


class _OutboundRefused(Exception):
    def __init__(self, reason: str, detail: str, fields: dict[str, str]) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.fields = reason, detail, fields


def _outbound_reason(exc: BaseException) -> str:
    if isinstance(exc, _OutboundRefused):
        return f"{exc.reason}: {exc.detail}"
    if isinstance(exc, trio.TooSlowError):
        return "connect timeout"
    causes: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        causes += list(exc.__cause__.exceptions)
    if any(isinstance(c, OSError) and c.errno == errno.ECONNREFUSED for c in causes):
        return "connection refused"
    return f"connect failed: {exc}"


def _bind_error(transport: str, address: str, port: int, exc: OSError) -> str:
    where = f"{transport} {_addr((address, port))}"
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied. Ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE; or choose others with --sip-port/--tls-port"
        )
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (another SIP server running?)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
