"""TCP and TLS connections, both ways: admitting and verifying the ones peers open (the
5061 gate's log lines), opening the ones our outbound legs need, and feeding every framed
message to the core. Each connection lives in the connection pool while it is open."""

from __future__ import annotations

import datetime as dt
import errno
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
import trio

from sipserver.config.schema import PeerSettings
from sipserver.errors import SipServerError
from sipserver.log import bind_connection, clear_connection
from sipserver.proxy.core import SipCore
from sipserver.server.capture import HepCapture
from sipserver.server.credentials import Credentials
from sipserver.server.live_config import LiveConfig
from sipserver.server.peer_watch import PeerWatch
from sipserver.server.repeats import RepeatFilter
from sipserver.server.snapshot import ServerStats
from sipserver.sip.flow import Flow, Transmit, Transport, format_address
from sipserver.sip.framing import FramingError
from sipserver.transport.connection import StreamConnection, next_connection_id
from sipserver.transport.direct import BacklogWatch, PlainStream
from sipserver.transport.idle import IdleTimer
from sipserver.transport.limits import Budget
from sipserver.transport.pool import ConnectionPool
from sipserver.transport.tls_handshake import TlsAccepted, TlsRefused, tls_handshake

log = structlog.get_logger("sipserver")
REFRESH_MARGIN = 32.0  # seconds a softphone's flow outlives its longest registration


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


Dispatch = Callable[[list[Transmit], StreamConnection | None], Awaitable[None]]


class StreamService:
    def __init__(
        self,
        config: LiveConfig,
        core: SipCore,
        pool: ConnectionPool,
        credentials: Credentials,
        stats: ServerStats,
        dispatch: Dispatch,
        peer_watch: PeerWatch,
        repeats: RepeatFilter,
        backlog: BacklogWatch | None = None,
        capture: HepCapture | None = None,
    ) -> None:
        self.peer_watch = peer_watch
        self.repeats = repeats
        self._backlog = backlog
        self.capture = capture
        self._config = config
        self.core = core
        self.pool = pool
        self.credentials = credentials
        self.stats = stats
        self._dispatch = dispatch
        self.nursery: trio.Nursery | None = None  # the server's, set when it runs
        self.idle_timer = IdleTimer()  # its run() is the server's task
        self._local_addresses: dict[tuple[str, int], tuple[str, int]] = {}

    # --- inbound ------------------------------------------------------------------------
    # The listeners' handlers call _serve directly: a wrapper coroutine would be one more
    # frame held by every idle connection.
    def serve_tcp(self, stream: trio.SocketStream) -> Coroutine[Any, Any, None]:
        return self._serve(stream, Transport.TCP)

    def serve_tls(self, stream: trio.SocketStream) -> Coroutine[Any, Any, None]:
        return self._serve(stream, Transport.TLS)

    async def _serve(self, stream: trio.SocketStream, transport: Transport) -> None:
        try:
            remote = stream.socket.getpeername()[:2]
            local = stream.socket.getsockname()[:2]
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        # Every connection to a listener has the same local address: one tuple for all.
        local = self._local_addresses.setdefault(local, local)
        # Plain TCP from a peer's address is that peer at once; anything else (TLS before
        # its handshake, TCP from an address of no peer) is held in a budget of its own,
        # from which a newer stranger may evict it (limits.py).
        known = self.core.peers.by_address(remote[0])
        budget: Budget
        if transport == Transport.TLS:
            budget = "peer_handshake" if known else "handshake"
        else:
            budget = "peer" if known else "stranger"
        unproven = trio.CancelScope()
        evicted: list[str] = []

        def evict(reason: str) -> None:
            evicted.append(reason)
            unproven.cancel()

        admission = self.pool.caps.admit(remote[0], budget, evict)
        if isinstance(admission, str):
            await self._refuse(stream, transport, remote, admission)
            return
        if transport == Transport.TLS:
            known = None  # a TLS connection is its certificate's peer, not its address's
        connection_id = next_connection_id()
        bind_connection(
            transport=transport, remote=format_address(remote), connection_id=connection_id
        )
        started = time.monotonic()
        connection: StreamConnection | None = None
        flow = Flow(transport, local, remote, connection_id)
        try:
            if transport == Transport.TLS:
                with unproven:
                    accepted = await self._accept_tls(stream, remote)
                if evicted:
                    self._evicted(transport, remote, evicted[0])
                    return
                if accepted is None:
                    return
                refusal = self.pool.caps.promote(admission)
                if refusal is not None:
                    await self._refuse(accepted.stream, transport, remote, refusal)
                    return
                connection = StreamConnection(
                    accepted.stream,
                    flow,
                    accepted.peer,
                    self._config.current.limits.send_queue_bytes,
                    verified=True,
                    peer_cert=accepted.certificate,
                )
                del accepted  # the connection holds what it needs; this frame lives as long
            else:
                log.info("connection_opened", peer=known.name if known else None)
                queue = self._config.current.limits.send_queue_bytes
                connection = StreamConnection(PlainStream(stream), flow, known, queue)
            self.pool.add(connection)
            if budget == "stranger":  # it may be evicted for a newer one
                with unproven:
                    await self._run(connection, unverified=True)
            else:
                await self._run(connection)
            if evicted:
                connection.close_reason = evicted[0]
                self._evicted(transport, remote, evicted[0])
        except Exception:
            log.exception("internal_error")
        finally:
            self.pool.caps.release(admission)
            if connection is not None:
                self.pool.remove(connection)
                with trio.move_on_after(1, shield=True):
                    now = trio.current_time()
                    reason = connection.close_reason
                    await self._dispatch(self.core.transport_failed(flow, reason, now), None)
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

    async def _refuse(
        self, stream: trio.abc.Stream, transport: Transport, remote: tuple[str, int], why: str
    ) -> None:
        if self._first("connection_refused", remote, why):
            log.warning(
                "connection_refused", transport=transport, remote=format_address(remote), reason=why
            )
        await trio.aclose_forcefully(stream)

    def _evicted(self, transport: Transport, remote: tuple[str, int], why: str) -> None:
        if self._first("connection_evicted", remote, "evicted"):
            log.warning("connection_evicted", transport=transport, reason=why)

    def _first(self, event: str, remote: tuple[str, int], reason: str) -> bool:
        interval = self._config.current.log.repeat_interval
        return self.repeats.first(event, remote[0], reason, trio.current_time(), interval)

    async def _accept_tls(
        self, stream: trio.SocketStream, remote: tuple[str, int]
    ) -> TlsAccepted | None:
        credentials = self.credentials.current
        assert self.credentials.server_context is not None and credentials is not None
        ours = credentials.certificate.info
        config = self._config.current
        result = await tls_handshake(
            stream,
            self.credentials.server_context,
            config.tls.handshake_timeout,
            self.core.peers.peers,  # the allow-list, and our own processes when they share
            credentials.revocation,
        )
        outcome = (
            ("accepted", "") if isinstance(result, TlsAccepted) else ("refused", result.reason)
        )
        self.stats.tls_handshakes[outcome] += 1
        if isinstance(result, TlsRefused):
            self.stats.refusals[("", f"tls_{result.reason}")] += 1
            cert_fields = result.certificate.log_fields("peer_cert_") if result.certificate else {}
            self.peer_watch.refused(result.certificate, result.reason, _now())
            if self._first("tls_peer_refused", remote, result.reason):
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
        bind_connection(
            peer=result.peer.name,
            peer_fqdn=result.peer.fqdn,
            peer_cert_thumbprint_sha256=result.certificate.thumbprint_sha256,
            peer_cert_issuer=result.certificate.issuer,
            peer_cert_serial=result.certificate.serial,
            our_thumbprint_sha1=ours.thumbprint_sha1,
        )
        self.credentials.note_issuer(result.peer.name, result.certificate.issuer)
        session = "resumed" if result.session_resumed else "full"
        self.stats.peer_handshakes[(result.peer.name, session)] += 1
        self.peer_watch.observed(
            result.peer, result.certificate, result.identity_source, "inbound", _now()
        )
        log.info(
            "tls_peer_accepted",
            identity_source=result.identity_source,
            tls_version=result.tls_version,
            cipher=result.cipher,
            tls_session_resumed=result.session_resumed,
            our_thumbprint_sha1=ours.thumbprint_sha1,
            our_thumbprint_sha256=ours.thumbprint_sha256,
            **result.certificate.log_fields("peer_cert_"),
        )
        return result

    # --- outbound -----------------------------------------------------------------------
    def connect_soon(self, flow: Flow) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self._connect, flow)

    async def _connect(self, flow: Flow) -> None:
        config = self._config.current
        target = self.core.peers.by_fqdn(flow.server_name) if flow.server_name else None
        # This task was started by whichever connection's message needed the leg: its
        # context (that peer, its certificate) is not this connection's.
        clear_connection()
        connection_id = next_connection_id()  # named from the first line, the handshake's
        bind_connection(
            transport=flow.transport,
            remote=flow.remote_text,
            connection_id=connection_id,
            target=target.name if target else None,
            target_fqdn=target.fqdn if target else None,
        )
        started = time.monotonic()
        stream: trio.abc.Stream | None = None
        accepted: TlsAccepted | None = None
        try:
            with trio.fail_after(config.tls.handshake_timeout):
                sock_stream = await trio.open_tcp_stream(flow.remote[0], flow.remote[1])
            stream = sock_stream
            if flow.transport == Transport.TLS:
                accepted = await self._verify_target(sock_stream, target)
                stream = accepted.stream
        except (OSError, trio.TooSlowError, _OutboundRefused) as exc:
            fields = exc.fields if isinstance(exc, _OutboundRefused) else {}
            reason = _outbound_reason(exc)
            seconds = round(time.monotonic() - started, 3)
            log.warning("outbound_connection_failed", reason=reason, seconds=seconds, **fields)
            self.pool.take_waiting(flow)
            if stream is not None:
                await trio.aclose_forcefully(stream)
            await self._dispatch(
                self.core.transport_failed(flow, reason, trio.current_time()), None
            )
            return
        local = sock_stream.socket.getsockname()[:2]
        connection = StreamConnection(
            stream if accepted is not None else PlainStream(sock_stream),
            Flow(flow.transport, local, flow.remote, connection_id, flow.server_name),
            target,
            config.limits.send_queue_bytes,
            verified=accepted is not None,
            peer_cert=accepted.certificate if accepted else None,
        )
        self.pool.add(connection, outbound=True)
        log.info("outbound_connection_opened", seconds=round(time.monotonic() - started, 3))
        capturing = self.capture is not None and config.capture.hep is not None
        for waiting in self.pool.take_waiting(flow):
            if capturing and waiting.data and self.capture is not None:
                # Captured now, when the connection it goes on (our port) exists.
                on = connection.flow
                self.capture.capture(on.transport, on.local, on.remote, waiting.data)
            connection.queue(waiting)
        try:
            await self._run(connection, keepalive=True)
        finally:
            self.pool.remove(connection)
            log.info(
                "connection_closed", reason=connection.close_reason, messages=connection.messages_in
            )
            with trio.move_on_after(1, shield=True):
                await connection.stream.aclose()
            now = trio.current_time()
            reason = connection.close_reason
            await self._dispatch(
                self.core.transport_failed(flow, reason, now)
                + self.core.transport_failed(connection.flow, reason, now),
                None,
            )

    async def _verify_target(
        self, stream: trio.SocketStream, target: PeerSettings | None
    ) -> TlsAccepted:
        credentials = self.credentials.current
        context = self.credentials.client_context
        assert context is not None and target is not None  # TLS flows always name a peer
        result = await tls_handshake(
            stream,
            context,
            self._config.current.tls.handshake_timeout,
            (),
            credentials.revocation if credentials else None,
            target=target,
        )
        if isinstance(result, TlsRefused):
            cert_fields = (
                result.certificate.log_fields("target_cert_") if result.certificate else {}
            )
            raise _OutboundRefused(result.reason, result.detail, cert_fields)
        self.credentials.note_issuer(target.name, result.certificate.issuer)
        self.peer_watch.observed(
            target, result.certificate, result.identity_source, "outbound", _now()
        )
        log.info(
            "tls_target_accepted",
            target_fqdn=target.fqdn,
            tls_version=result.tls_version,
            cipher=result.cipher,
            tls_session_resumed=result.session_resumed,
            **result.certificate.log_fields("target_cert_"),
        )
        certificate = result.certificate
        bind_connection(  # every later line of this connection
            target_cert_thumbprint_sha256=certificate.thumbprint_sha256,
            target_cert_issuer=certificate.issuer,
            target_cert_serial=certificate.serial,
        )
        return result

    # --- both ---------------------------------------------------------------------------
    def _run(
        self, connection: StreamConnection, *, keepalive: bool = False, unverified: bool = False
    ) -> Coroutine[Any, Any, None]:
        """The connection's run() with our settings, to be awaited by the caller: an async
        wrapper would be one more frame held by every idle connection."""
        config = self._config.current
        limits = config.limits
        idle = limits.unverified_idle_timeout if unverified else limits.idle_timeout
        idle_key = "limits.unverified_idle_timeout" if unverified else "limits.idle_timeout"
        if connection.peer is not None and connection.peer.is_softphone:
            # Its registration's refresh is what keeps the flow busy: never close the
            # connection before a binding on it could have been refreshed.
            idle = max(idle, config.registrar.max_expires + REFRESH_MARGIN)
            idle_key = "registrar.max_expires + 32 s"
        return connection.run(
            self.core.limits,
            idle,
            limits.send_timeout,
            self._message,
            self._framing_lost,
            tasks=self._tasks(),
            idle_timer=self.idle_timer,
            keepalive_interval=limits.keepalive_interval if keepalive else 0.0,
            backlog=self._backlog,
            idle_key=idle_key,
        )

    def _tasks(self) -> trio.Nursery:
        assert self.nursery is not None, "connections run only while the server does"
        return self.nursery

    async def _message(self, connection: StreamConnection, data: bytes) -> None:
        self.stats.count_message("in", connection.flow.transport, data)
        if self.capture is not None and self._config.current.capture.hep is not None:
            flow = connection.flow
            self.capture.capture(flow.transport, flow.remote, flow.local, data)
        tls_peer = connection.peer if connection.verified else None
        try:
            transmits = self.core.receive_stream_message(
                data, connection.flow, tls_peer, trio.current_time(), connection.peer_cert
            )
        except Exception:
            log.exception("internal_error")
            return
        await self._dispatch(transmits, connection)

    async def _framing_lost(self, connection: StreamConnection, error: FramingError) -> None:
        await self._dispatch(self.core.framing_lost(error, connection.flow), connection)


class _OutboundRefused(SipServerError):
    """The target's TLS handshake or certificate was refused (ends the connect attempt)."""

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
