"""Seeing the SIP that mutual TLS hides, with the tools operators use: a HEP v3 copy of
every message to sngrep (a gateway -> sipserver -> PBX call over mutual TLS on both legs;
sngrep's pcap has every message of both legs), and the TLS key log with which tshark
decrypts a capture of a mutual-TLS call taken on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import struct
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import answer_plan, dial_plan, peer
from tests.e2e.conftest import SERVER_FQDN, Pki, StartServer, free_port, need
from tests.e2e.peers import (
    assert_callee_ok,
    assert_sipp_ok,
    sipp_callee,
    sipp_caller,
    stunnel_client,
    stunnel_server,
)
from tests.e2e.sip_client import read_response
from tests.e2e.sipp_scenarios import call_uac, call_uas
from tests.e2e.test_tls import client_context

pytestmark = pytest.mark.e2e
START_LINE = re.compile(rb"(?:[A-Z]+ sip:[^ ]+ SIP/2\.0|SIP/2\.0 \d{3} [^\r]*)\r\n")


@contextlib.contextmanager
def sngrep_collector(pcap: Path) -> Iterator[int]:
    """sngrep listening for HEP on a free loopback port, writing what it gets to `pcap`."""
    port = free_port()
    process = subprocess.Popen(
        [need("sngrep"), "-N", "-q", "-L", f"udp:127.0.0.1:{port}", "-O", str(pcap)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_bound(port, process)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def _wait_bound(port: int, process: subprocess.Popen[bytes]) -> None:
    """sngrep prints nothing when ready: its port is taken once it listens."""
    for _ in range(100):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(0.05)
    raise AssertionError("sngrep never listened")


def sip_packets(pcap: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(source, its port, destination, its port, SIP message) of each packet of a pcap
    as sngrep writes it: classic format, Ethernet, IPv4."""
    data = pcap.read_bytes()
    assert struct.unpack_from("<I", data, 20) == (1,)  # Ethernet
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        (length,) = struct.unpack_from("<I", data, offset + 8)
        packet = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        found = START_LINE.search(packet)
        if found:
            source, destination = socket.inet_ntoa(packet[26:30]), socket.inet_ntoa(packet[30:34])
            ports = struct.unpack_from("!HH", packet, 34)
            packets.append((source, ports[0], destination, ports[1], packet[found.start() :]))
    return packets


def sip_messages(pcap: Path) -> list[bytes]:
    return [packet[-1] for packet in sip_packets(pcap)]


def summary(message: bytes) -> tuple[str, int]:
    """(start line without the URI, Vias): one Via on the gateway's leg, two on the PBX's."""
    start = message.split(b"\r\n", 1)[0].decode()
    words = start.split(" ")
    name = f"{words[1]} {words[2]}" if start.startswith("SIP/2.0") else words[0]
    vias = sum(
        line.split(b":", 1)[1].count(b",") + 1
        for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line.lower().startswith((b"via:", b"v:"))
    )
    return name, vias


def test_every_message_of_both_legs_of_an_mtls_call_reaches_sngrep_over_hep(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    pcap = tmp_path / "hep.pcap"
    uas_port = free_port()
    with (
        sngrep_collector(pcap) as collector,
        stunnel_server(pki, tmp_path, uas_port, "pbx1") as pbx,
    ):
        server = start_server(
            extra_config=peer("pbx1", port=pbx, transport="tls")
            + dial_plan("main", "sip-secured", ["pbx1"], numbers=["+1*"])
            + f'\n[capture]\nhep = "udp:127.0.0.1:{collector}"\nhep_id = 77\n'
        )
        with (
            sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, "t1") as callee,
            stunnel_client(pki, tmp_path, server.tls_port) as local,
        ):
            assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), local, "+14255550100", "t1"))
            assert_callee_ok(callee)
        server.wait_for("call_routed", dial_plan="main")
        server.stop()  # every captured message is sent before it exits
    seen = Counter(summary(m) for m in sip_messages(pcap))
    for leg in (1, 2):  # the gateway's leg, then ours to the PBX
        for message in ("INVITE", "180 Ringing", "200 OK", "ACK", "BYE"):
            assert seen[(message, leg)] >= 1, (message, leg, seen)
    assert seen[("200 OK", 1)] == 2 and seen[("200 OK", 2)] == 2, seen  # INVITE's and BYE's
    assert all(m.count(b"Call-ID:") == 1 for m in sip_messages(pcap))
    # Real addresses and ports on every one, the first INVITE on our new leg to the PBX
    # included (captured once its connection, and so our port, exists).
    for source, source_port, destination, destination_port, _ in sip_packets(pcap):
        assert (source, destination) == ("127.0.0.1", "127.0.0.1")
        assert source_port and destination_port
    ports = {(p[1], p[3]) for p in sip_packets(pcap)}
    assert pbx in {port for pair in ports for port in pair}, ports


def test_tshark_decrypts_a_captured_mtls_call_with_the_key_log(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    keylog = tmp_path / "keys.log"
    server = start_server(
        extra_config=answer_plan("sip-secured", numbers=["5xxx"])
        + '\n[admin]\naddress = "127.0.0.1:0"\n',
        tls_extra=f'keylog_file = "{keylog}"',
    )
    on = server.wait_for("tls_keylog_on")
    assert on["path"] == str(keylog) and on["level"] == "warning"
    admin = server.wait_for("admin_listener_started")["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as page:
        assert json.loads(page.read())["tls_keylog_file"] == str(keylog)
    capture = tmp_path / "loopback.pcapng"
    tshark = need("tshark")
    capturing = subprocess.Popen(
        [tshark, "-i", "lo", "-f", f"tcp port {server.tls_port}", "-w", str(capture)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert capturing.stderr is not None
        for line in capturing.stderr:  # after "Capturing on 'Loopback: lo'"
            if "Capture started" in line:
                break
        context = client_context(pki, pki.gw1, "gw1")
        with (
            socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=SERVER_FQDN) as tls,
        ):
            tls.sendall(invite(server.tls_port))
            assert read_response(tls).startswith(b"SIP/2.0 1")
        server.wait_for("call_answered")
    finally:
        capturing.send_signal(signal.SIGINT)
        capturing.wait(15)
    assert keylog.stat().st_mode & 0o777 == 0o600
    assert b"CLIENT_HANDSHAKE_TRAFFIC_SECRET" in keylog.read_bytes() or b"CLIENT_RANDOM" in (
        keylog.read_bytes()
    )
    decoded = subprocess.run(
        [
            tshark, "-r", str(capture), "-o", f"tls.keylog_file:{keylog}",
            "-d", f"tcp.port=={server.tls_port},tls", "-d", f"tls.port=={server.tls_port},sip",
            "-Y", "sip.Method == \"INVITE\"", "-T", "fields", "-e", "sip.r-uri",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert f"sip:5000@{SERVER_FQDN}" in decoded.stdout, decoded.stdout + decoded.stderr
    # Without the key log the same capture shows no SIP at all.
    opaque = subprocess.run(
        [tshark, "-r", str(capture), "-d", f"tcp.port=={server.tls_port},tls", "-Y", "sip"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert opaque.stdout.strip() == "", opaque.stdout


def invite(port: int) -> bytes:
    return (
        f"INVITE sip:5000@{SERVER_FQDN} SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bKkeylog;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:gw@gw1.example.test>;tag=k\r\n"
        f"To: <sip:5000@{SERVER_FQDN}>\r\nCall-ID: keylog-1\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:gw@127.0.0.1:5099;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
