"""Mirroring SIP to a HEP collector (`[capture] hep`): every message received and sent,
after decryption, goes into a bounded queue from the task that handled it; one task of
its own encodes and sends whatever has gathered each time it wakes. A call never waits for
the collector: when the queue is full the message is dropped and counted
(`capture_dropped` in the log once per interval, `sipserver_capture_total{result}`), and a
collector that is down costs only the drops."""

from __future__ import annotations

import math
import socket
import struct
import time
from collections import deque

import structlog
import trio

from sipserver.config.schema import CaptureSettings
from sipserver.server.hep import encode, method_of
from sipserver.server.live_config import LiveConfig

log = structlog.get_logger("sipserver")
QUEUE = 4096  # messages waiting for the sender
CONNECT_TIMEOUT = 2.0
RETRY_AFTER = 5.0  # seconds before a failed TCP collector is tried again
REPORT_EVERY = 10.0  # seconds between capture_dropped lines while drops go on

Captured = tuple[float, str, tuple[str, int], tuple[str, int], bytes]


class HepCapture:
    def __init__(self, config: LiveConfig) -> None:
        self._config = config
        self._queue: deque[Captured] = deque()
        self._wake = trio.Event()
        self.sent = 0
        self.dropped = 0
        self._reported_drops = 0
        self._target: str | None = None
        self._collector: tuple[str, int] = ("", 0)
        self._udp: socket.socket | None = None
        self._stream: trio.SocketStream | None = None
        self._retry_at = 0.0

    @property
    def settings(self) -> CaptureSettings:
        return self._config.current.capture

    def capture(
        self, transport: str, source: tuple[str, int], destination: tuple[str, int], data: bytes
    ) -> None:
        """Queue one message (a CRLF keep-alive is no SIP message); never waits."""
        if not data or data[0] in (13, 10):
            return
        if len(self._queue) >= QUEUE:
            self.dropped += 1
            return
        self._queue.append((time.time(), transport, source, destination, data))
        self._wake.set()

    async def run(self) -> None:
        """Send what is queued to the collector the configuration names now: one wake-up
        for everything that gathered meanwhile."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_drops)
                while True:
                    await self._wake.wait()
                    await self.flush()
        finally:
            self._close()

    async def flush(self) -> None:
        """Encode and send everything queued now."""
        self._wake = trio.Event()
        packets = self._encode_queued()
        if packets:
            await self._send(packets)

    def _encode_queued(self) -> list[bytes]:
        settings = self.settings
        wanted = settings.methods
        packets = []
        while self._queue:
            when, transport, source, destination, data = self._queue.popleft()
            if settings.hep is None or (wanted and method_of(data) not in wanted):
                continue
            fraction, seconds = math.modf(when)
            try:
                packets.append(
                    encode(
                        transport,
                        source,
                        destination,
                        int(seconds),
                        int(fraction * 1_000_000),
                        settings.hep_id,
                        data,
                    )
                )
            except (ValueError, struct.error):  # a copy is never worth a server
                self.dropped += 1
        return packets

    async def _send(self, packets: list[bytes]) -> None:
        target = self.settings.hep
        if target is None:
            return
        if target != self._target:  # first use, or a reload changed it
            self._close()
            self._target, self._retry_at = target, 0.0
            address = target.partition(":")[2]
            host, _, port_text = address.rpartition(":")
            self._collector = (host.strip("[]"), int(port_text))
        if target.startswith("udp:"):
            self._send_datagrams(packets)
        else:
            await self._send_stream(packets)

    def _send_datagrams(self, packets: list[bytes]) -> None:
        """Without waiting: a full socket buffer or an unreachable collector is a drop."""
        if self._udp is None:
            family = socket.AF_INET6 if ":" in self._collector[0] else socket.AF_INET
            self._udp = socket.socket(family, socket.SOCK_DGRAM)
            self._udp.setblocking(False)
        for packet in packets:
            try:
                self._udp.sendto(packet, self._collector)
                self.sent += 1
            except OSError:  # BlockingIOError, ECONNREFUSED from an earlier ICMP error...
                self.dropped += 1

    async def _send_stream(self, packets: list[bytes]) -> None:
        if self._stream is None and trio.current_time() < self._retry_at:
            self.dropped += len(packets)
            return
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if self._stream is None:
                    self._stream = await trio.open_tcp_stream(*self._collector)
                await self._stream.send_all(b"".join(packets))
            self.sent += len(packets)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.dropped += len(packets)
            self._close_stream()
            self._retry_at = trio.current_time() + RETRY_AFTER
            log.debug("capture_send_failed", collector=self._target, reason=str(exc))

    def _close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.socket.close()  # nothing else waits on it
            self._stream = None

    async def _report_drops(self) -> None:
        while True:
            await trio.sleep(REPORT_EVERY)
            if self.dropped > self._reported_drops:
                log.warning(
                    "capture_dropped",
                    messages=self.dropped - self._reported_drops,
                    total=self.dropped,
                    collector=self.settings.hep,
                    why="the capture queue was full or the collector could not be reached;"
                    " calls were not delayed",
                )
                self._reported_drops = self.dropped
