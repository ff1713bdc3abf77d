"""Softphone bindings across workers: with `workers = 2` a phone's flow lives in one worker,
yet a gateway call that lands on the other reaches it, over the sibling hop (mutual TLS
between our own processes) and through the supervisor's shared view; the dialog's ACK and
BYE follow the Record-Route over the same hops. A worker that dies takes its bindings
with it (480 at once, not a timeout)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from tests.certs import Issued, make_leaf
from tests.configs import dial_plan, peer, table
from tests.e2e.conftest import SERVER_FQDN, Pki, RunningServer, StartServer, free_port
from tests.e2e.softphone import TlsPhone
from tests.e2e.test_workers import worker_pid
from tests.e2e.tls_gateway import AnsweringPhone, gateway_call

pytestmark = pytest.mark.e2e

CALLS = 32

PHONE_PLAN = (
    peer("phone1", kind="softphone", addresses=[], numbers=["7001"], health_check=None)
    + dial_plan("phones", "sip-secured", ["phone1"], numbers=["70xx"])
    + table("registrar", {"min_expires": 60})
)


@pytest.fixture
def phone_cert(pki: Pki) -> Issued:
    return make_leaf(pki.ca, dns=["phone1.example.test"])


@pytest.fixture
def two_workers(start_server: StartServer) -> RunningServer:
    admin = table("admin", {"address": f"127.0.0.1:{free_port()}"})
    server = start_server(server_extra="workers = 2", extra_config=PHONE_PLAN + admin)
    server.wait_count("cluster_sharing_bindings", 2)
    return server


@pytest.fixture
def phone(two_workers: RunningServer, pki: Pki, phone_cert: Issued) -> Iterator[TlsPhone]:
    phone = TlsPhone(pki, phone_cert, two_workers.tls_port)
    yield phone
    phone.close()


def test_every_call_reaches_the_phone_whichever_worker_it_lands_on(
    two_workers: RunningServer, phone: TlsPhone, pki: Pki
) -> None:
    server = two_workers
    assert phone.register(expires=300).startswith(b"SIP/2.0 200 OK")
    holder = server.wait_for("registration_added", number="7001")["worker"]
    server.wait_for("cluster_bindings_written", worker=holder, published=1)
    answering = AnsweringPhone(phone)
    try:
        results = [gateway_call(pki, server.tls_port, "7001") for _ in range(CALLS)]
    finally:
        answering.close()
    assert answering.error is None, answering.error
    assert [r.final for r in results] == ["SIP/2.0 200 OK"] * CALLS, results
    assert [r.bye for r in results] == ["SIP/2.0 200 OK"] * CALLS, results
    assert (answering.count("INVITE"), answering.count("ACK"), answering.count("BYE")) == (
        CALLS,
        CALLS,
        CALLS,
    )
    routed = server.wait_count("call_routed", CALLS, dial_plan="phones", peer="gw1")
    by_worker = Counter(line["worker"] for line in routed)
    # The kernel spread the gateway's connections: some calls arrived at the other worker
    # and went to the phone through the worker that holds its flow.
    other = 1 - holder
    assert by_worker[other] > 0, by_worker
    handed = [line for line in routed if line["worker"] == other]
    assert {line["target"] for line in handed} == {"sipserver-sibling"}
    assert all(line["status"] == 200 for line in handed)
    # The holder rang the phone for them, named the hop as the peer it came from, and
    # counted none of them twice.
    relayed = server.wait_count("call_routed", len(handed), peer="sipserver-sibling")
    assert {(line["worker"], line["target"]) for line in relayed} == {(holder, "phone1")}
    # The sibling hop was mutual TLS with our own certificate, both ways verified.
    hops = [
        line
        for line in server.lines
        if line.get("event") == "tls_peer_accepted" and line.get("peer") == "sipserver-sibling"
    ]
    assert hops and all(line["peer_fqdn"] == "sip.example.test" for line in hops)


def test_with_a_self_signed_certificate_the_workers_prove_themselves_and_a_forgery_fails(
    start_server: StartServer, pki: Pki, phone_cert: Issued, tmp_path: Path
) -> None:
    """The default set-up (a generated, self-signed certificate): the workers hand calls to
    each other with it, and a certificate that only copies its name is refused."""
    ours = make_leaf(None, dns=[SERVER_FQDN])
    server = start_server(
        server_extra="workers = 2", extra_config=PHONE_PLAN, certificates={"sip": ours}
    )
    server.wait_count("cluster_sharing_bindings", 2)
    trusted = tmp_path / "trusted.pem"  # what the phone and the gateway trust
    trusted.write_bytes(pki.ca.cert_pem + ours.cert_pem)
    phone = TlsPhone(pki, phone_cert, server.tls_port, cafile=trusted)
    assert phone.register().startswith(b"SIP/2.0 200 OK")
    holder = server.wait_for("registration_added", number="7001")["worker"]
    server.wait_for("cluster_bindings_written", worker=holder, published=1)
    answering = AnsweringPhone(phone)
    try:
        results = [gateway_call(pki, server.tls_port, "7001", cafile=trusted) for _ in range(16)]
    finally:
        answering.close()
    assert [r.final for r in results] == ["SIP/2.0 200 OK"] * 16
    handed = server.events("call_routed")
    assert any(line.get("target") == "sipserver-sibling" for line in handed), "none handed over"
    # A certificate of our own making that names us, with another key: not us.
    forged = make_leaf(None, dns=[SERVER_FQDN])
    context = ssl.create_default_context(cafile=str(trusted))
    context.load_cert_chain(*map(str, forged.write_pair(tmp_path / "forged", "forged")))
    with (
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
        context.wrap_socket(raw, server_hostname=SERVER_FQDN) as tls,
    ):
        tls.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        assert tls.recv(100) == b""  # TLS 1.3 reports a refused client certificate late
        raise ConnectionResetError("closed without an answer")
    refused = server.wait_for("tls_peer_refused")
    assert refused["reason"] == "untrusted_chain", refused
    assert (
        refused["peer_cert_thumbprint_sha256"]
        != ours.cert.fingerprint(hashes.SHA256()).hex().upper()
    )


def test_the_phone_of_a_dead_worker_gets_480_at_once(
    two_workers: RunningServer, phone: TlsPhone, pki: Pki
) -> None:
    server = two_workers
    assert phone.register().startswith(b"SIP/2.0 200 OK")
    holder = server.wait_for("registration_added", number="7001")["worker"]
    server.wait_for("cluster_bindings_written", worker=holder, published=1)
    os.kill(worker_pid(server.process.pid, holder), signal.SIGKILL)
    exited = server.wait_for("worker_exited", worker_index=holder)
    assert exited["bindings_removed"] == 1
    server.wait_for("worker_replaced", worker_index=holder)
    # The phone's connection died with its worker; wherever a call lands now, no binding.
    for _ in range(6):
        assert gateway_call(pki, server.tls_port, "7001").final.startswith("SIP/2.0 480")
