"""Running the real peers: sipp callers and callees, and stunnel4 in either direction."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import Issued, make_leaf
from tests.e2e.conftest import SERVER_FQDN, Pki, free_port, need

# What sipp says when the port free_port() gave it went to another process before sipp bound
# it (the suite runs tests in parallel): it exits before placing any call, so the caller can
# be started again on a new port.
SIPP_PORT_TAKEN = "Unable to bind main socket"


def sipp_caller_command(
    scenario: Path,
    port: int,
    number: str,
    transport: str = "u1",
    calls: int = 1,
    rate: int = 10,
    timeout: str = "40s",
) -> list[str]:
    return [
        need("sipp"),
        "-sf",
        str(scenario),
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",  # sipp's own port: its default, 5060, is taken when callers run in parallel
        str(free_port()),
        "-s",
        number,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-timeout",
        timeout,
        "-timeout_error",
        "-nostdin",
        f"127.0.0.1:{port}",
    ]


def sipp_caller(
    scenario: Path, port: int, number: str, transport: str = "u1"
) -> subprocess.CompletedProcess[str]:
    """One call from sipp to the server (or to a local stunnel) on 127.0.0.1:port."""
    for _ in range(3):
        result = subprocess.run(
            sipp_caller_command(scenario, port, number, transport),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=scenario.parent,
        )
        if SIPP_PORT_TAKEN not in result.stderr:
            break
    return result


def assert_sipp_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@contextlib.contextmanager
def sipp_callee(
    scenario: Path,
    port: int,
    transport: str = "u1",
    calls: int = 1,
    limit: int | None = None,
    timeout: str = "40s",
) -> Iterator[subprocess.Popen[str]]:
    """`limit`: calls open at once before sipp stops taking new ones (sipp's -l)."""
    process = subprocess.Popen(
        [
            need("sipp"),
            "-sf",
            str(scenario),
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(calls),
            "-timeout",
            timeout,
            "-timeout_error",
            "-nostdin",
            *(["-l", str(limit)] if limit is not None else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=scenario.parent,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def assert_callee_ok(process: subprocess.Popen[str], also: str = "") -> None:
    """sipp's callee ends well; `also`: the other party's output, for the failure message."""
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate(timeout=10)
        raise AssertionError(
            f"sipp's callee is still waiting:\n{out[-3000:]}\n{also[-3000:]}"
        ) from None
    assert process.returncode == 0, out[-3000:] + also[-3000:]


@contextlib.contextmanager
def stunnel(workdir: Path, service: str) -> Iterator[None]:
    """stunnel4 in the foreground with one service; returns once it is listening."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / f"stunnel-{free_port()}.conf"
    conf.write_text(f"foreground = yes\npid =\ndebug = 5\n[sip]\n{service}")
    with stunnel_with(conf):
        yield


@contextlib.contextmanager
def stunnel_with(conf: Path) -> Iterator[None]:
    """stunnel4 on a configuration file that keeps it in the foreground; returns once it is
    listening."""
    tunnel = subprocess.Popen(
        [need("stunnel4"), str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert tunnel.stdout is not None
        for line in tunnel.stdout:
            if "Configuration successful" in line:
                break
        else:
            pytest.fail(f"stunnel did not start with {conf}")
        threading.Thread(target=lambda: [None for _ in tunnel.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield
    finally:
        tunnel.terminate()
        tunnel.wait(10)


@contextlib.contextmanager
def stunnel_client(
    pki: Pki, workdir: Path, connect_port: int, cert: Issued | None = None
) -> Iterator[int]:
    """Client mode, as a gateway: plain TCP in on the yielded port, mutual TLS out to the
    server, presenting `cert` (gw1's by default) and verifying the server's name."""
    local = free_port()
    with stunnel(
        workdir,
        f"client = yes\naccept = 127.0.0.1:{local}\nconnect = 127.0.0.1:{connect_port}\n"
        f"cert = {pki.combined('stunnel-client', cert or pki.gw1)}\nCAfile = {pki.ca_file}\n"
        f"verifyChain = yes\ncheckHost = {SERVER_FQDN}\n",
    ):
        yield local


@contextlib.contextmanager
def stunnel_server(pki: Pki, workdir: Path, backend_port: int, name: str) -> Iterator[int]:
    """Server mode, as a PBX: mutual TLS in with a certificate for <name>.example.test,
    requiring a client certificate (ours) that chains to the test CA; TCP on to sipp."""
    cert = make_leaf(pki.ca, dns=[f"{name}.example.test"])
    listen = free_port()
    with stunnel(
        workdir,
        f"accept = 127.0.0.1:{listen}\nconnect = 127.0.0.1:{backend_port}\n"
        f"cert = {pki.combined(name, cert)}\nCAfile = {pki.ca_file}\n"
        "verifyChain = yes\nrequireCert = yes\n",
    ):
        yield listen


class Kamailio:
    """Debian's kamailio in the foreground with a config the test wrote; its log is kept."""

    def __init__(self, config: Path) -> None:
        runtime = config.parent / f"kamailio-run-{free_port()}"
        runtime.mkdir()
        self.process = subprocess.Popen(
            [
                need("kamailio"),
                "-f",
                str(config),
                "-DD",
                "-E",
                "-Y",
                str(runtime),
                "-m",
                "64",
                "-M",
                "8",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        self._listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if "Listening on" in line:
                self._listening.set()
        self._listening.set()  # it exited: let the waiter see that

    def wait_listening(self, timeout: float = 20) -> None:
        assert self._listening.wait(timeout) and self.process.poll() is None, (
            "kamailio did not start:\n" + self.tail()
        )

    def tail(self, lines: int = 30) -> str:
        return "".join(self.log[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@contextlib.contextmanager
def kamailio(config: Path) -> Iterator[Kamailio]:
    running = Kamailio(config)
    try:
        running.wait_listening()
        yield running
    finally:
        running.stop()
