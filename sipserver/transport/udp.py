"""Bound sockets for the listeners: UDP for 5060, and TCP ones that worker processes
share."""

from __future__ import annotations

import contextlib
import socket

import trio


async def bound_socket(
    address: str, port: int, kind: socket.SocketKind, *, reuse_port: bool = False
) -> trio.socket.SocketType:
    """`reuse_port`: several worker processes share the port; the kernel spreads the
    datagrams (by source) or new connections over them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # "::" and "0.0.0.0" on the same port must not collide.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        await sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp_socket(
    address: str, port: int, *, reuse_port: bool = False
) -> trio.socket.SocketType:
    return await bound_socket(address, port, socket.SOCK_DGRAM, reuse_port=reuse_port)
