"""The shell: wires the pure core to trio. It owns the one nursery, feeds the core what
the listeners and connections receive with the time, sends what the core returns, logs
the core's events, and sleeps until the core's next deadline.

Every wait on a peer is bounded: handshakes by tls.handshake_timeout, reads by
limits.idle_timeout, writes by limits.send_timeout.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from sipserver.build import core_build
from sipserver.certstore import CertificateSetupError, ServerCredentials
from sipserver.config.schema import Config
from sipserver.log import clear_connection
from sipserver.proxy.core import SipCore
from sipserver.proxy.locations import Lookup
from sipserver.proxy.sharing import BindingSharing
from sipserver.server.admin import serve_admin, serve_admin_socket, snapshot_pages
from sipserver.server.binding_store import BindingStore, owner_name
from sipserver.server.capture import HepCapture
from sipserver.server.collector import SWEEP_SECONDS, Sweep, sweep_every, tune_for_serving
from sipserver.server.connections import StreamService
from sipserver.server.credentials import Credentials
from sipserver.server.drain import Drain, serve_signals
from sipserver.server.event_log import log_event
from sipserver.server.live_config import LiveConfig
from sipserver.server.overload import OverloadGuard
from sipserver.server.peer_watch import PeerWatch
from sipserver.server.reload import Reloader
from sipserver.server.repeats import RepeatFilter
from sipserver.server.shared_call_counts import SharedCallCounts
from sipserver.server.snapshot import CertificateState, ServerStats, StatsSnapshot
from sipserver.sip.flow import Flow, Transmit, Transport, format_address
from sipserver.transport.connection import StreamConnection
from sipserver.transport.direct import datagram_queue, raw_socket, send_datagram_now
from sipserver.transport.dns import Resolver
from sipserver.transport.listeners import Listener, Listeners, StartupError
from sipserver.transport.pool import ConnectionPool
from sipserver.transport.resp import RespClient, StoreAddress

log = structlog.get_logger("sipserver")
SUPERVISOR_CHECK = 1.0  # seconds between a worker's checks that its supervisor lives
UDP_BATCH = 16  # datagrams that were waiting handled in one step before other tasks run


def _reachable(address: str) -> str:
    """Where our other processes reach a listener bound to `address`."""
    if address == "0.0.0.0":
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Server:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        overrides: Callable[[Config], Config] = lambda c: c,
        worker: tuple[int, int] | None = None,
        admin_socket: str | None = None,
        shared_store: str | None = None,
    ) -> None:
        """`worker`: (index, count) when this is one of several processes sharing the
        ports (the supervisor in server/workers.py starts them); `admin_socket`: where it
        serves /healthz and /metrics for the supervisor; `shared_store`: the store where
        our processes share softphone bindings (server/binding_store.py)."""
        self.live = LiveConfig(config)
        self.worker = worker
        self.admin_socket = admin_socket
        self.shared_store = shared_store
        self.sharing: BindingSharing | None = None
        self.binding_store: BindingStore | None = None
        self.call_counts: SharedCallCounts | None = None
        self.stats = ServerStats()
        self.repeats = RepeatFilter()
        self.pool = ConnectionPool(config.limits)
        self.core = SipCore(config, connections=self.pool, entropy=os.urandom)
        self.listeners = Listeners()
        speaks = worker is None or worker[0] == 0  # one voice per server for daily warnings
        self.credentials = Credentials(self.core.use_certificate, speaks_for_server=speaks)
        self.reloader = Reloader(
            config_path, overrides, self.live, self._apply, self.credentials, self.stats
        )
        self.drain = Drain(self.core, self.listeners)
        self.overload = OverloadGuard(self.core, self.live)
        self.capture = HepCapture(self.live)
        self.peer_watch = PeerWatch(self.live, self.credentials, speaks_for_server=speaks)
        self.streams = StreamService(
            self.live,
            self.core,
            self.pool,
            self.credentials,
            self.stats,
            self.dispatch,
            self.peer_watch,
            self.repeats,
            self.overload,
            self.capture,
        )
        self.resolver = Resolver(config.dns.nameservers, config.dns.timeout)
        self._timer_wakeup = trio.Event()
        self._timer_armed_for: float | None = None  # the deadline the timer task sleeps until

    @property
    def config(self) -> Config:
        return self.live.current

    # --- lifecycle ---------------------------------------------------------------------
    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        cfg = self.config
        log.info(
            "server_starting",
            fqdn=cfg.server.fqdn,
            config=cfg.source,
            peers=len(cfg.peers),
            core=core_build(),
        )
        if Transport.TLS in cfg.server.transports:
            try:
                self.credentials.install(self.credentials.prepare(cfg, _now()), cfg)
            except CertificateSetupError as exc:
                raise StartupError(str(exc), exc.key) from exc
        self.peer_watch.load()
        try:
            await self._serve(task_status, handle_signals)
        finally:
            self.peer_watch.save(_now())  # merged with what the other workers wrote
        log.info("server_stopped")

    async def _serve(
        self, task_status: trio.TaskStatus[list[Listener]], handle_signals: bool
    ) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery:
            self.streams.nursery = nursery
            await self.listeners.start(
                nursery,
                cfg.server,
                self._serve_udp,
                self.streams.serve_tcp,
                self.streams.serve_tls,
                self.worker,
                self._ports_known,
            )
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self.streams.idle_timer.run)
            if cfg.server.watch_interval > 0:
                # The first snapshot is taken before we say we are ready, so that no change
                # made after server_ready can be missed.
                nursery.start_soon(self.reloader.watch, self.reloader.watched_files())
            nursery.start_soon(self._certificate_watch)
            nursery.start_soon(self.overload.run)
            nursery.start_soon(self.capture.run)
            nursery.start_soon(self._repeat_summaries)
            nursery.start_soon(sweep_every, SWEEP_SECONDS, _log_sweep, self._loop_busy)
            if self.worker is not None:
                nursery.start_soon(self._watch_supervisor, nursery.cancel_scope)
            if handle_signals:
                await nursery.start(
                    serve_signals,
                    self.reloader.reload,
                    self.drain,
                    lambda: self.config.server.shutdown_grace,
                    nursery.cancel_scope,
                )
            tune_for_serving()
            log.info(
                "server_ready" if self.worker is None else "worker_ready",
                fqdn=cfg.server.fqdn,
                listeners=[str(item) for item in self.listeners.open],
                peers=[p.name for p in cfg.peers],
            )
            pages = snapshot_pages(self.snapshot)
            admin = cfg.admin.host_port
            if self.admin_socket is not None:  # a worker: its supervisor serves admin.address
                await nursery.start(serve_admin_socket, pages, self.admin_socket)
            elif admin is not None:
                await nursery.start(serve_admin, pages, admin[0], admin[1])
            task_status.started(list(self.listeners.open))

    async def _watch_supervisor(self, stop: trio.CancelScope) -> None:
        """A worker whose supervisor is gone (killed) drains and exits: nobody would
        replace it or sum its counters, and it would hold the ports a new server shares."""
        supervisor = os.getppid()
        while os.getppid() == supervisor:
            await trio.sleep(SUPERVISOR_CHECK)
        log.error("supervisor_gone", supervisor_pid=supervisor, action="draining")
        if not self.drain.started:
            await self.drain.run(stop, "supervisor gone", self.config.server.shutdown_grace)

    def _ports_known(self) -> None:
        """Our Via and Record-Route name the ports actually bound (a worker's own), and
        bindings are shared, before the first message can arrive on a shared port."""
        cfg = self.config
        self.core.set_ports(
            self.listeners.sip_port or cfg.server.sip_port,
            self.listeners.tls_port or cfg.server.tls_port,
        )
        assert self.streams.nursery is not None
        self._share_state(self.streams.nursery)

    def _share_state(self, nursery: trio.Nursery) -> None:
        """With a shared store: publish our bindings there, and let calls find the flows
        that our other processes hold (reached through their own TLS port); share the
        call counts that admission control limits."""
        cluster = self.config.cluster
        url = cluster.store or self.shared_store  # Redis across machines, else the supervisor's
        if url is None:
            return
        index = self.worker[0] if self.worker is not None else 0
        owner = owner_name(index, os.getpid())
        address = StoreAddress.parse(url)
        own_tls = [item for item in self.listeners.open if item.transport == Transport.TLS]
        if own_tls:
            own_tls.sort(key=lambda item: (not item.own, ":" in item.address))
            hop = (cluster.advertise or _reachable(own_tls[0].address), own_tls[0].port)
            sharing = self.sharing = self.core.share_bindings(owner, hop[0])
            self.binding_store = BindingStore(
                RespClient(address, cluster.timeout),
                owner,
                hop,
                lambda: sharing.ours(trio.current_time()),
            )
            log.info(
                "cluster_sharing_bindings", store=str(address), owner=owner, hop=format_address(hop)
            )
            nursery.start_soon(self.binding_store.run)
        self.call_counts = SharedCallCounts(
            RespClient(address, cluster.timeout),
            owner,
            self.core.call_limits,
            self.live,
            heartbeat=self.binding_store is None,
        )
        nursery.start_soon(self.call_counts.run)

    async def _find_bindings(self, number: str) -> None:
        """Where the number's other flows are (bounded: the store answers or fails fast)."""
        clear_connection()  # not the connection that asked
        assert self.binding_store is not None and self.sharing is not None
        found = await self.binding_store.lookup(number)
        await self.dispatch(self.sharing.found(number, found, trio.current_time()))

    def _apply(self, new: Config, credentials: ServerCredentials | None) -> None:
        """Swap in a validated configuration (and its certificates) at once."""
        if new.dns != self.config.dns:
            self.resolver = Resolver(new.dns.nameservers, new.dns.timeout)
        self.live.current = new
        self.core.configure(new)
        self.pool.caps.configure(new.limits)
        if credentials is not None:
            self.credentials.install(credentials, new)
        self.pool.close_removed_softphones(new)
        self._wake_timer()  # health-check targets and their deadlines may have changed

    def snapshot(self) -> StatsSnapshot:
        """Everything /healthz and /metrics show, as values."""
        core = self.core.statistics()
        now = _now()
        return StatsSnapshot(
            taken_at=now,
            listeners=tuple(str(item) for item in self.listeners.open),  # [::1] bracketed
            draining=core.draining,
            overloaded=core.overloaded,
            calls_shed=core.shed,
            busy=round(self.overload.busy, 3),
            tls_expected=Transport.TLS in self.config.server.transports,
            connections=dict(self.pool.count_by_transport()),
            tls_handshakes=dict(self.stats.tls_handshakes),
            refusals=dict(self.stats.refusals),
            peer_handshakes=dict(self.stats.peer_handshakes),
            setup_seconds=dict(self.stats.setup_seconds),
            connections_evicted=self.pool.caps.evicted,
            capture_sent=self.capture.sent,
            capture_dropped=self.capture.dropped,
            tls_keylog_file=str(keylog.path) if (keylog := self.credentials.keylog) else None,
            udp_receive_dropped=sum(
                datagram_queue(raw_socket(sock))[1] for sock in self.listeners.udp_sockets.values()
            ),
            messages=dict(self.stats.messages),
            calls=core.calls,
            targets_up=core.targets_up,
            certificates=tuple(
                CertificateState(role, info) for role, info in self.credentials.in_use()
            ),
            reloads=dict(self.stats.reloads),
            peer_days_left=tuple(self.peer_watch.days_left(now)),
            peers_expiring=tuple(self.peer_watch.expiring(now)),
            registrations=core.registrations,
            active_by_peer=core.active_by_peer,
            active_by_plan=core.active_by_plan,
            limit_refusals=core.limit_refusals,
            bindings=core.bindings,
            cluster=self.binding_store.state() if self.binding_store is not None else None,
        )

    # --- time ---------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        """Sleep until the core's next deadline (transaction timers and health pings), or
        until the core needs waking earlier."""
        while True:
            deadline = self.core.next_deadline()
            self._timer_armed_for = deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_wakeup.wait()
            self._timer_wakeup = trio.Event()
            await self.dispatch(self.core.handle_timers(trio.current_time()))

    async def _repeat_summaries(self) -> None:
        while True:
            interval = self.config.log.repeat_interval
            await trio.sleep(interval if interval > 0 else 10.0)
            self.repeats.flush(trio.current_time(), interval)

    def _loop_busy(self) -> float:
        return self.overload.busy

    def _wake_timer(self) -> None:
        self._timer_wakeup.set()

    async def _certificate_watch(self) -> None:
        """Hourly: expiry warnings (each once a UTC day) and a switch to a better or
        still-valid certificate when one is there."""
        while True:
            self.credentials.check(self.config, _now())
            self.peer_watch.check(_now())
            await trio.sleep(self.config.tls.certificate_check_interval)

    # --- sending --------------------------------------------------------------------------
    async def dispatch(
        self, transmits: list[Transmit], origin: StreamConnection | None = None
    ) -> None:
        """Log what the core says happened and send what it produced. Answers to `origin`
        (the connection whose reader is calling) wait for queue room; anything for other
        connections never waits."""
        for lookup in self.core.take_lookups():
            assert self.streams.nursery is not None
            self.streams.nursery.start_soon(self._locate, lookup)
        if self.sharing is not None and self.binding_store is not None:
            changes = self.sharing.take_changes()
            if changes:
                self.binding_store.changed(changes)
            for number in self.sharing.take_queries():
                assert self.streams.nursery is not None
                self.streams.nursery.start_soon(self._find_bindings, number)
        events = self.core.take_events()
        if events:
            now, interval = trio.current_time(), self.config.log.repeat_interval
            for event in events:
                self.stats.note_event(event)
                log_event(event, self.repeats, now, interval)
        capturing = self.config.capture.hep is not None
        for transmit in transmits:
            flow = transmit.flow
            if transmit.data:
                self.stats.count_message("out", flow.transport, transmit.data)
                if capturing:
                    on = self.pool.flow_for(flow) if flow.transport != Transport.UDP else flow
                    if on.connection_id is not None or on.transport == Transport.UDP:
                        # (one for a connection still being opened is captured when it is)
                        self.capture.capture(on.transport, on.local, on.remote, transmit.data)
            if flow.transport == Transport.UDP:
                await self._send_datagram(flow, transmit.data)
            elif flow.connection_id is None:
                if self.pool.send_outbound(transmit):
                    self.streams.connect_soon(flow)
            elif (connection := self.pool.get(flow.connection_id)) is None:
                log.info(
                    "transmit_dropped",
                    reason="connection closed",
                    remote=flow.remote_text,
                    transport=flow.transport,
                )
            elif connection is origin:
                await connection.send(transmit, self.config.limits.send_timeout)
            else:
                connection.queue(transmit)
        self.drain.core_changed()
        # Wake the timer task only when the core now needs it earlier than it planned.
        deadline = self.core.next_deadline()
        if deadline is not None and (
            self._timer_armed_for is None or deadline < self._timer_armed_for
        ):
            self._wake_timer()

    async def _locate(self, lookup: Lookup) -> None:
        """One RFC 3263 lookup the core asked for; its answer resumes the calls waiting."""
        clear_connection()  # not the connection that asked
        located = await self.resolver.locate(lookup)
        fields = {"fqdn": lookup.fqdn, "transport": lookup.transport}
        if located.error is not None:
            log.warning("target_lookup_failed", reason=located.error, **fields)
        else:
            destinations = [format_address(d) for d in located.destinations]
            log.info(
                "target_located",
                how=located.how,
                naptr_failed=located.naptr_error,
                destinations=destinations,
                ttl=located.ttl,
                **fields,
            )
        await self.dispatch(self.core.located(lookup, located, trio.current_time()))

    async def _send_datagram(self, flow: Flow, data: bytes) -> None:
        sock = self.listeners.udp_socket(flow.local, flow.remote[0])
        if sock is None:
            log.warning(
                "udp_send_failed", remote=flow.remote_text, reason="no UDP socket of that family"
            )
            return
        try:
            if not send_datagram_now(sock, data, flow.remote):
                await sock.sendto(data, flow.remote)
        except OSError as exc:
            log.warning("udp_send_failed", remote=flow.remote_text, reason=exc.strerror)

    # --- UDP ---------------------------------------------------------------------------
    async def _serve_udp(self, sock: trio.socket.SocketType, local: tuple[str, int]) -> None:
        raw = raw_socket(sock)
        assert raw is not None, "trio keeps a stdlib socket under each of its sockets"
        handled = 0  # datagrams handled since the loop last yielded
        while True:
            limit = self.config.limits.max_message_bytes
            try:
                data, address = raw.recvfrom(limit + 1)
            except BlockingIOError:
                # Waiting is the loop's schedule point. trio's recvfrom would also yield
                # after every datagram found waiting: a pass of its loop (and an epoll
                # call) each, where a burst is handled here in one step, UDP_BATCH at most.
                await trio.lowlevel.wait_readable(raw)
                handled = 0
                continue
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp_receive_error", reason=exc.strerror)
            else:
                await self._datagram(data, (address[0], address[1]), local, raw, limit)
            handled += 1
            if handled >= UDP_BATCH:
                await trio.lowlevel.checkpoint()
                handled = 0

    async def _datagram(
        self,
        data: bytes,
        source: tuple[str, int],
        local: tuple[str, int],
        raw: socket.socket,
        limit: int,
    ) -> None:
        """One datagram from `source` to our `local` address, read from `raw` with room for
        one byte over `limit` (limits.max_message_bytes), so that a longer one shows."""
        if self.overload.active and (waiting := datagram_queue(raw)[0]):
            self.overload.note_backlog(waiting)  # datagrams waiting: falling behind?
        flow = Flow(Transport.UDP, local, source)
        if len(data) > limit:
            log.warning(
                "sip_datagram_too_large",
                remote=flow.remote_text,
                limit=limit,
                reason="limits.max_message_bytes",
            )
            return
        self.stats.count_message("in", "udp", data)
        if self.config.capture.hep is not None:
            self.capture.capture("udp", flow.remote, local, data)
        try:
            transmits = self.core.receive_datagram(data, flow, trio.current_time())
        except Exception:
            log.exception("internal_error", transport="udp", remote=flow.remote_text)
            return
        await self.dispatch(transmits)


def _log_sweep(swept: Sweep) -> None:
    log.info(
        "memory_swept",
        collected=swept.collected,
        frozen_before=swept.frozen_before,
        frozen_after=swept.frozen_after,
        pause_ms=round(swept.seconds * 1000, 1),
    )
