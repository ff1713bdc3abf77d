"""Mirroring SIP to a HEP collector (`[capture] hep`): every message received and sent,
after decryption, goes into a bounded queue from the task that handled it; one task of
its own encodes and sends them. A call never waits for the collector: when the queue is
full the message is dropped and counted (`capture_dropped` in the log once per interval,
`sipserver_capture_dropped_total`), and a collector that is down costs only the drops."""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable

import structlog
import trio

from sipserver.server.hep import encode, method_of
from sipserver.settings import CaptureSettings, Config

log = structlog.get_logger("sipserver")
QUEUE = 4096  # messages waiting for the sender
CONNECT_TIMEOUT = 2.0
RETRY_AFTER = 5.0  # seconds before a failed TCP collector is tried again
REPORT_EVERY = 10.0  # seconds between capture_dropped lines while drops go on

Captured = tuple[float, str, tuple[str, int], tuple[str, int], bytes]


class HepCapture:
    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._send, self._receive = trio.open_memory_channel[Captured](QUEUE)
        self.sent = 0
        self.dropped = 0
        self._reported_drops = 0

    @property
    def settings(self) -> CaptureSettings:
        return self._config().capture

    def capture(
        self, transport: str, source: tuple[str, int], destination: tuple[str, int], data: bytes
    ) -> None:
        """Queue one message (a CRLF keep-alive is no SIP message); never waits."""
        if not data or data[0] in (13, 10):
            return
        try:
            self._send.send_nowait((time.time(), transport, source, destination, data))
        except trio.WouldBlock:
            self.dropped += 1

    async def run(self) -> None:
        """Send what is queued to the collector the configuration names now."""
        stream: trio.abc.Stream | None = None
        udp: trio.socket.SocketType | None = None
        target: str | None = None
        retry_at = 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_drops)
            async for when, transport, source, destination, data in self._receive:
                settings = self.settings
                if settings.hep is None:
                    continue
                wanted = settings.methods
                if wanted and method_of(data) not in wanted:
                    continue
                fraction, seconds = math.modf(when)
                try:
                    packet = encode(
                        transport,
                        source,
                        destination,
                        int(seconds),
                        int(fraction * 1_000_000),
                        settings.hep_id,
                        data,
                    )
                except (ValueError, struct.error):  # a copy is never worth a server
                    self.dropped += 1
                    continue
                if settings.hep != target:  # first use, or a reload changed it
                    stream, udp = await _close(stream, udp)
                    target, retry_at = settings.hep, 0.0
                kind, _, address = target.partition(":")
                host, _, port_text = address.rpartition(":")
                collector = (host.strip("[]"), int(port_text))
                try:
                    if kind == "udp":
                        if udp is None:
                            udp = trio.socket.socket(
                                trio.socket.AF_INET6
                                if ":" in collector[0]
                                else trio.socket.AF_INET,
                                trio.socket.SOCK_DGRAM,
                            )
                        await udp.sendto(packet, collector)
                    else:
                        if stream is None:
                            if trio.current_time() < retry_at:
                                self.dropped += 1
                                continue
                            with trio.fail_after(CONNECT_TIMEOUT):
                                stream = await trio.open_tcp_stream(*collector)
                        with trio.fail_after(CONNECT_TIMEOUT):
                            await stream.send_all(packet)
                    self.sent += 1
                except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                    self.dropped += 1
                    if stream is not None:
                        await trio.aclose_forcefully(stream)
                        stream = None
                    if kind == "tcp":
                        retry_at = trio.current_time() + RETRY_AFTER
                    log.debug("capture_send_failed", collector=target, reason=str(exc))

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


async def _close(
    stream: trio.abc.Stream | None, udp: trio.socket.SocketType | None
) -> tuple[None, None]:
    if stream is not None:
        await trio.aclose_forcefully(stream)
    if udp is not None:
        udp.close()
    return None, None
