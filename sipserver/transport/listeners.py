"""Opening and closing the listening sockets: UDP and TCP on the SIP port, TLS on the TLS
port, on every configured address. Accept loops run under cancel scopes of their own, so
a drain stops accepting while the connections already open carry on."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from sipserver.config.schema import ServerSettings
from sipserver.errors import SipServerError
from sipserver.sip.flow import Transport, format_address
from sipserver.transport.udp import bound_socket, open_udp_socket

log = structlog.get_logger("sipserver")
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY = 0.1  # seconds
_CONNECTION_TASK = "sipserver.connection"

UdpHandler = Callable[[trio.socket.SocketType, tuple[str, int]], Awaitable[None]]
StreamHandler = Callable[[trio.SocketStream], Awaitable[None]]


class StartupError(SipServerError):
    """The server cannot start: what failed and what to do about it, and the configuration
    key it concerns when there is one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Listener:
    transport: Transport
    address: str
    port: int
    own: bool = False  # a worker's own port (in its Via and Record-Route), not the shared one

    def __str__(self) -> str:
        return f"{self.transport}:{format_address((self.address, self.port))}"


class Listeners:
    def __init__(self) -> None:
        self.open: list[Listener] = []
        self.udp_sockets: dict[tuple[str, int], trio.socket.SocketType] = {}
        self._outbound_udp: dict[int, trio.socket.SocketType] = {}  # by address family
        self._accept_scopes: list[trio.CancelScope] = []
        self._socket_listeners: list[trio.SocketListener] = []

    @property
    def sip_port(self) -> int | None:
        """The UDP/TCP port for our Via and Record-Route: a worker's own, else the shared."""
        return self._port(lambda item: item.transport != Transport.TLS)

    @property
    def tls_port(self) -> int | None:
        return self._port(lambda item: item.transport == Transport.TLS)

    def _port(self, wanted: Callable[[Listener], bool]) -> int | None:
        ports = [item for item in self.open if wanted(item)]
        return next((i.port for i in sorted(ports, key=lambda i: not i.own)), None)

    async def start(
        self,
        nursery: trio.Nursery,
        settings: ServerSettings,
        serve_udp: UdpHandler,
        serve_tcp: StreamHandler,
        serve_tls: StreamHandler,
        worker: tuple[int, int] | None = None,
        ports_known: Callable[[], None] = lambda: None,
    ) -> None:
        """Open every listener. As worker `index` of `count`, the configured ports are
        shared with the other workers (SO_REUSEPORT) and the worker opens ports of its own,
        which its Via and Record-Route name, so that what answers it comes back to it.
        `ports_known()` is called once the ports for our Via are open, before any shared
        port is: a worker that replaces a dead one joins while traffic flows, and what it
        sends before naming its own port would be answered to the shared one (and reach
        whichever worker the kernel picks)."""
        handlers = (serve_udp, serve_tcp, serve_tls)
        if worker is not None:
            index, count = worker
            base = settings.worker_port_base
            own_sip, own_tls = (base + index, base + count + index) if base else (0, 0)
            await self._open_set(nursery, settings, own_sip, own_tls, handlers, False, own=True)
            ports_known()
        shared = worker is not None
        await self._open_set(
            nursery, settings, settings.sip_port, settings.tls_port, handlers, shared
        )
        if worker is None:
            ports_known()
        if not self.open:
            raise StartupError("no listener could be opened")

    async def _open_set(
        self,
        nursery: trio.Nursery,
        settings: ServerSettings,
        sip_port: int,
        tls_port: int,
        handlers: tuple[UdpHandler, StreamHandler, StreamHandler],
        reuse_port: bool,
        *,
        own: bool = False,
    ) -> None:
        serve_udp, serve_tcp, serve_tls = handlers
        if (
            sip_port == 0
            and Transport.UDP in settings.transports
            and Transport.TCP in settings.transports
        ):
            # Port 0: one number free for UDP and TCP on every address, found before any
            # listener opens, so TCP never finds the number UDP got already taken.
            sip_port = _port_free_for_both(settings.addresses) or 0
        for transport in Transport:
            if transport not in settings.transports:
                continue
            for address in settings.addresses:
                port = tls_port if transport == Transport.TLS else sip_port
                try:
                    if transport == Transport.UDP:
                        bound = await self._open_udp(
                            nursery, address, port, serve_udp, reuse_port, own
                        )
                    else:
                        handler = serve_tls if transport == Transport.TLS else serve_tcp
                        bound = await self._open_stream(
                            nursery, transport, address, port, handler, reuse_port, own
                        )
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
                    key = "server.tls_port" if transport == Transport.TLS else "server.sip_port"
                    if exc.errno == errno.EADDRNOTAVAIL:
                        key = "server.addresses"
                    message = _bind_error(transport, address, port, exc)
                    raise StartupError(message, key) from exc
                # Port 0 picks a free port once; UDP and TCP then share it, like 5060 does.
                if transport == Transport.TLS and tls_port == 0:
                    tls_port = bound
                elif transport != Transport.TLS and sip_port == 0:
                    sip_port = bound

    async def _open_udp(
        self,
        nursery: trio.Nursery,
        address: str,
        port: int,
        serve: UdpHandler,
        reuse_port: bool,
        own: bool,
    ) -> int:
        sock = await open_udp_socket(address, port, reuse_port=reuse_port)
        local = sock.getsockname()[:2]
        self.udp_sockets[local] = sock
        nursery.start_soon(serve, sock, local)
        return self._opened(Transport.UDP, local, own)

    async def _open_stream(
        self,
        nursery: trio.Nursery,
        transport: Transport,
        address: str,
        port: int,
        handler: StreamHandler,
        reuse_port: bool,
        own: bool,
    ) -> int:
        if reuse_port:
            listeners = [await _shared_tcp_listener(address, port)]
        else:
            listeners = await trio.open_tcp_listeners(port, host=address, backlog=1024)
        local = listeners[0].socket.getsockname()[:2]
        self._socket_listeners.extend(listeners)
        await nursery.start(self._accept, nursery, handler, listeners)
        return self._opened(transport, local, own)

    def _opened(self, transport: Transport, local: tuple[str, int], own: bool = False) -> int:
        self.open.append(Listener(transport, local[0], local[1], own))
        log.info(
            "listener_started",
            transport=transport,
            address=local[0],
            port=local[1],
            own=own or None,  # a worker's own port
        )
        return int(local[1])

    async def _accept(
        self,
        connections: trio.Nursery,
        handler: StreamHandler,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scope = trio.CancelScope()
        self._accept_scopes.append(scope)
        with scope:
            async with trio.open_nursery() as loops:
                for listener in listeners:
                    loops.start_soon(_accept_loop, listener, handler, connections)
                task_status.started(listeners)

    async def stop_accepting(self) -> None:
        """Close the TCP/TLS listening sockets; UDP keeps answering (drain's 503s)."""
        for scope in self._accept_scopes:
            scope.cancel()
        for listener in self._socket_listeners:
            with trio.move_on_after(1, shield=True):
                await listener.aclose()

    def udp_socket(self, local: tuple[str, int], remote_host: str) -> trio.socket.SocketType | None:
        """The socket a datagram arrived on, else one of the right family: a worker's own
        first, so that peers that answer the source port (not our Via) answer this worker."""
        if sock := self.udp_sockets.get(local):
            return sock
        family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
        try:
            return self._outbound_udp[family]
        except KeyError:
            pass
        own = {(item.address, item.port) for item in self.open if item.own}
        fitting = [(addr, s) for addr, s in self.udp_sockets.items() if s.family == family]
        fitting.sort(key=lambda entry: entry[0] not in own)
        if not fitting:
            return None
        self._outbound_udp[family] = fitting[0][1]  # the listeners are open: it stays so
        return fitting[0][1]


async def _accept_loop(
    listener: trio.SocketListener, handler: StreamHandler, connections: trio.Nursery
) -> None:
    """trio.serve_listeners without its wrapper task: the handler is the connection's task
    and closes the stream itself, so every idle connection holds one frame fewer."""
    failures, failing_since = 0, 0.0
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                # Out of descriptors or memory: new connections wait in the kernel's backlog.
                # Said once, not at every retry; accept_resumed gives the count.
                if not failures:
                    failing_since = trio.current_time()
                    log.error(
                        "accept_failed", reason=os.strerror(exc.errno), retry_in=_ACCEPT_RETRY
                    )
                failures += 1
                await trio.sleep(_ACCEPT_RETRY)
                continue
            if failures:
                seconds = round(trio.current_time() - failing_since, 3)
                log.info("accept_resumed", failed_attempts=failures, seconds=seconds)
                failures = 0
            # A name of our own: trio would format one for every connection's task.
            connections.start_soon(handler, stream, name=_CONNECTION_TASK)


async def _shared_tcp_listener(address: str, port: int) -> trio.SocketListener:
    """A listening socket that other workers' sockets share (SO_REUSEPORT): the kernel
    hands each new connection to one of them."""
    sock = await bound_socket(address, port, socket.SOCK_STREAM, reuse_port=True)
    try:
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def port_free_for_both(addresses: tuple[str, ...]) -> int | None:
    """A port number UDP and TCP can both bind on all these addresses right now."""
    return _port_free_for_both(addresses)


def _port_free_for_both(addresses: tuple[str, ...], attempts: int = 50) -> int | None:
    """A port number that UDP and TCP can both bind on all these addresses right now."""
    for _ in range(attempts):
        probes: list[socket.socket] = []
        try:
            port = 0
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    probe = socket.socket(family, kind)
                    probes.append(probe)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    probe.bind((address, port))
                    port = probe.getsockname()[1]
            return port
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    return None


def _bind_error(transport: str, address: str, port: int, exc: OSError) -> str:
    where = f"{transport} {format_address((address, port))}"
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied. Ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE; or choose others with --sip-port/--tls-port"
        )
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (another SIP server running?)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
