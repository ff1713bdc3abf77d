"""Start the real server as a process and watch its JSON log; certificates made per run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.certs import Issued, make_ca, make_leaf

SERVER_FQDN = "sip.example.test"
SCENARIOS = Path(__file__).parent / "scenarios"
REPO = Path(__file__).resolve().parents[2]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run the README's test command, which installs it")
    return path


@dataclass
class Pki:
    root: Path
    ca: Issued
    server: Issued
    gw1: Issued

    @property
    def ca_file(self) -> Path:
        return self.root / "trust" / "ca.crt"

    def client_files(self, name: str, issued: Issued) -> tuple[Path, Path]:
        return issued.write_pair(self.root / "clients", name)

    def combined(self, name: str, issued: Issued) -> Path:
        return issued.write_combined(self.root / "clients" / f"{name}.pem")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca("sipserver test CA")
    (root / "trust").mkdir()
    (root / "trust" / "ca.crt").write_bytes(ca.cert_pem)
    server = make_leaf(ca, dns=[SERVER_FQDN], uris=[f"sip:{SERVER_FQDN}"])
    gw1 = make_leaf(ca, dns=["gw1.example.test"])
    return Pki(root, ca, server, gw1)


# Shedding (limits.overload_busy) follows how busy the machine running the tests is, not
# the test: only the tests of overload turn it on. UDP load sheds like TCP load, so a
# loaded CI machine would otherwise turn calls into 503s in tests about something else.
NO_SHEDDING = "overload_busy = 0"

BASE_CONFIG = """
[server]
fqdn = "sip.example.test"
addresses = ["127.0.0.1", "::1"]
sip_port = 0
tls_port = 0
{server_extra}

[tls]
certificate_dir = "{cert_dir}"
trust_dir = "{trust_dir}"
handshake_timeout = {handshake_timeout}
{tls_extra}

[limits]
{limits}

[log]
level = "debug"
{log_extra}

[[peer]]
name = "gw1"
fqdn = "gw1.example.test"
kind = "gateway"
addresses = [{peer_addresses}]
"""


class RunningServer:
    def __init__(self, process: subprocess.Popen[str], workdir: Path) -> None:
        self.process = process
        self.workdir = workdir
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.raw.append(line)
                with contextlib.suppress(json.JSONDecodeError):
                    self.lines.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first log line (old or new) with this event and these field values."""
        return self.wait_until(
            lambda e: e.get("event") == event and all(e.get(k) == v for k, v in fields.items()),
            timeout,
            f"{event} {fields}",
        )

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for entry in self.lines[seen:]:
                    if predicate(entry):
                        return entry
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    tail = "".join(self.raw[-15:])
                    raise AssertionError(
                        f"no log line {what} within {timeout} s; last lines:\n{tail}"
                    )
                self._cond.wait(remaining)

    def wait_count(
        self, event: str, count: int, timeout: float = 10.0, **fields: Any
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` lines of this event (with these fields) were logged:
        the server logs a message's outcome just as the peer receives it."""

        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events(event) if all(e.get(k) == v for k, v in fields.items())]

        self.wait_until(lambda _: len(matching()) >= count, timeout, f"{count} x {event} {fields}")
        return matching()

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.lines if e.get("event") == event]

    def port(self, transport: str) -> int:
        """The listening port (the shared one, with several workers)."""
        return int(
            self.wait_until(
                lambda e: (
                    e.get("event") == "listener_started"
                    and e.get("transport") == transport
                    and e.get("address") == "127.0.0.1"
                    and not e.get("own")
                ),
                10.0,
                f"listener_started {transport} 127.0.0.1",
            )["port"]
        )

    @property
    def sip_port(self) -> int:
        return self.port("udp")

    @property
    def tls_port(self) -> int:
        return self.port("tls")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        return self.process.returncode


StartServer = Callable[..., RunningServer]


def run_server(
    config: Path,
    workdir: Path,
    args: list[str] | None = None,
    state: Path | None = None,
    open_files: int | None = None,
    new_session: bool = False,
) -> RunningServer:
    """`sipserver run` on this checkout (not a stale installed copy), logging JSON; returns
    once it is ready. `open_files` caps its file descriptors (util-linux's prlimit)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    if state is not None:
        env["SIPSERVER_STATE_DIR"] = str(state)
    command = [sys.executable, "-m", "sipserver", "run", "--config", str(config)]
    if open_files is not None:
        command = ["prlimit", f"--nofile={open_files}:{open_files}", *command]
    process = subprocess.Popen(
        [*command, "--log-format", "json", *(args or [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=workdir,
        start_new_session=new_session,  # a process group of its own, as under a terminal
    )
    server = RunningServer(process, workdir)
    try:
        server.wait_for("server_ready", timeout=20)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def start_server(tmp_path: Path, pki: Pki) -> Iterator[StartServer]:
    servers: list[RunningServer] = []

    def start(
        *,
        server_extra: str = "",
        limits: str = "",
        # Tests count refusals one by one unless they test the summaries.
        log_extra: str = "repeat_interval = 0",
        handshake_timeout: float = 3.0,
        peer_addresses: str = '"127.0.0.1", "::1"',
        with_certificate: bool = True,
        extra_config: str = "",
        args: list[str] | None = None,
        trust_dir: Path | None = None,
        certificates: dict[str, Issued] | None = None,
        tls_extra: str = "",
        open_files: int | None = None,
        new_session: bool = False,
    ) -> RunningServer:
        workdir = tmp_path / f"server{len(servers)}"
        cert_dir = workdir / "server"
        if certificates is not None:
            for stem, issued in certificates.items():
                issued.write_pair(cert_dir, stem)
        elif with_certificate:
            pki.server.write_pair(cert_dir, "sip")
        else:  # an empty folder: a certificate is generated into it
            cert_dir.mkdir(parents=True)
        text = (
            BASE_CONFIG.format(
                server_extra=server_extra,
                cert_dir=cert_dir,
                trust_dir=trust_dir or pki.root / "trust",
                handshake_timeout=handshake_timeout,
                tls_extra=tls_extra,
                limits=limits if "overload_busy" in limits else f"{limits}\n{NO_SHEDDING}",
                log_extra=log_extra,
                peer_addresses=peer_addresses,
            )
            + extra_config
        )
        config = workdir / "sipserver.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
        server = run_server(
            config,
            workdir,
            args,
            state=workdir / "state",
            open_files=open_files,
            new_session=new_session,
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A port that is free for both TCP and UDP right now (SIP peers use either)."""
    while True:
        with (
            socket.socket(family, socket.SOCK_STREAM) as tcp,
            socket.socket(family, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port


def free_baresip_port(host: str = "127.0.0.1") -> int:
    """A port for baresip's sip_listen: free for UDP and TCP, and the next one free for TCP,
    where baresip listens for TLS (it failed to start now and then when only the first was
    checked: "SIP/TLS transport failed: Address already in use")."""
    while True:
        port = free_port(host=host)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tls:
            try:
                tls.bind((host, port + 1))
            except OSError:
                continue
        return port


def served_serial(port: int, pki: Pki) -> int:
    """The serial number of the certificate the server presents to a new TLS connection."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.check_hostname = False
    cert, key = pki.client_files("gw1", pki.gw1)
    context.load_cert_chain(str(cert), str(key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_FQDN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
