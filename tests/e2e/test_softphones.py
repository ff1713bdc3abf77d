"""Softphones through the real server: a phone registers over mutual TLS with its own
certificate and is called by a sipp gateway over the connection it registered on (RFC
5626); refusals say why; its binding goes with its connection, is replaced by a new flow
of the same instance, survives a reload and goes with the peer."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from tests.certs import Issued, make_leaf
from tests.configs import dial_plan, peer, table
from tests.e2e.conftest import Pki, RunningServer, StartServer, free_port
from tests.e2e.peers import sipp_caller_command
from tests.e2e.sip_client import header, status_line
from tests.e2e.sipp_scenarios import call_uac, invite_expecting
from tests.e2e.softphone import TlsPhone

pytestmark = pytest.mark.e2e

SOFTPHONE = (
    peer("phone1", kind="softphone", addresses=[], numbers=["7001"], health_check=None)
    + dial_plan("phones", "unsecured", ["phone1"], numbers=["70xx"])
    + table("registrar", {"min_expires": 60})
)


@pytest.fixture
def phone_cert(pki: Pki) -> Issued:
    return make_leaf(pki.ca, dns=["phone1.example.test"])


@pytest.fixture
def admin_port() -> int:
    return free_port()


@pytest.fixture
def server(start_server: StartServer, admin_port: int) -> RunningServer:
    admin = table("admin", {"address": f"127.0.0.1:{admin_port}"})
    return start_server(extra_config=SOFTPHONE + admin, server_extra="watch_interval = 0")


def metric(admin_port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start)
    )


@pytest.fixture
def phone(server: RunningServer, pki: Pki, phone_cert: Issued) -> Iterator[TlsPhone]:
    phone = TlsPhone(pki, phone_cert, server.tls_port)
    yield phone
    phone.close()


def caller(scenario: Path, server: RunningServer, number: str = "7001") -> subprocess.Popen[str]:
    """A sipp gateway (gw1, by its address) calling over UDP."""
    return subprocess.Popen(
        sipp_caller_command(scenario, server.sip_port, number),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=scenario.parent,
    )


def finished(process: subprocess.Popen[str]) -> None:
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out[-3000:]


def busy_here(phone: TlsPhone) -> bytes:
    """Take the next INVITE, refuse it with 486, and take the ACK for it."""
    invite = phone.receive()
    assert invite.startswith(b"INVITE "), invite[:200]
    phone.reply(invite, 486, "Busy Here")
    assert phone.receive().startswith(b"ACK ")
    return invite


def test_a_softphone_registers_over_mutual_tls_and_is_called_over_its_own_connection(
    server: RunningServer, phone: TlsPhone, phone_cert: Issued, tmp_path: Path, admin_port: int
) -> None:
    response = phone.register(expires=300)
    assert status_line(response) == "SIP/2.0 200 OK"
    contact = header(response, "Contact") or ""
    assert f"127.0.0.1:{phone.local_port};transport=tls>;expires=300" in contact
    added = server.wait_for("registration_added", number="7001")
    assert (added["peer"], added["transport"]) == ("phone1", "tls")
    thumbprint = phone_cert.cert.fingerprint(hashes.SHA256()).hex().upper()
    assert added["peer_cert_thumbprint_sha256"] == thumbprint
    assert metric(admin_port, 'sipserver_registered_bindings{transport="tls"}') == 1
    assert metric(admin_port, 'sipserver_registrations_total{change="added"}') == 1
    sipp = caller(call_uac(tmp_path / "uac.xml"), server)
    invite = phone.receive()
    # Sent over the registered connection, to the registered Contact.
    assert invite.startswith(
        f"INVITE sip:7001@127.0.0.1:{phone.local_port};transport=tls ".encode()
    )
    phone.reply(invite, 180, "Ringing")
    phone.reply(invite, 200, "OK")
    assert phone.receive().startswith(b"ACK ")
    bye = phone.receive()
    assert bye.startswith(b"BYE ")
    phone.reply(bye, 200, "OK")
    finished(sipp)
    routed = server.wait_for("call_routed", dial_plan="phones")
    assert (routed["target"], routed["target_transport"], routed["status"]) == (
        "phone1",
        "tls",
        200,
    )


def test_once_the_softphone_disconnects_its_number_gets_480_at_once(
    server: RunningServer, phone: TlsPhone, tmp_path: Path, admin_port: int
) -> None:
    assert status_line(phone.register()) == "SIP/2.0 200 OK"
    phone.close()
    removed = server.wait_for("registration_removed", number="7001")
    assert removed["reason"].startswith("connection closed")
    assert metric(admin_port, 'sipserver_registered_bindings{transport="tls"}') == 0
    checks = {"Warning": "7001 not registered"}
    finished(caller(invite_expecting(tmp_path / "480.xml", 480, checks=checks), server))


def test_refusals_name_the_number_the_peer_and_the_limit(
    server: RunningServer, phone: TlsPhone
) -> None:
    foreign = phone.register("7009")
    assert status_line(foreign) == "SIP/2.0 403 Forbidden"
    assert "Number 7009 is not one of softphone phone1 (phone1.example.test)'s numbers (7001)" in (
        header(foreign, "Warning") or ""
    )
    brief = phone.register(expires=10)
    assert status_line(brief) == "SIP/2.0 423 Interval Too Brief"
    assert header(brief, "Min-Expires") == "60"
    refused = server.wait_for("sip_request_answered", method="REGISTER", status=423)
    assert "below registrar.min_expires (60 s)" in refused["reason"]


def test_a_new_flow_of_the_same_instance_replaces_the_old_one(
    server: RunningServer, phone: TlsPhone, pki: Pki, phone_cert: Issued, tmp_path: Path
) -> None:
    first = phone.register(outbound=True)
    assert header(first, "Require") == "outbound" and header(first, "Flow-Timer") == "120"
    second = TlsPhone(pki, phone_cert, server.tls_port)
    try:
        assert status_line(second.register(outbound=True)) == "SIP/2.0 200 OK"
        server.wait_for("registration_replaced", number="7001")
        phone.close()  # the old flow ends; the binding lives on the new one
        server.wait_for("connection_closed", remote=f"127.0.0.1:{phone.local_port}")
        sipp = caller(invite_expecting(tmp_path / "486.xml", 486), server)
        busy_here(second)
        finished(sipp)
    finally:
        second.close()


def test_bindings_survive_a_reload_and_go_with_the_softphone(
    server: RunningServer, phone: TlsPhone, tmp_path: Path
) -> None:
    assert status_line(phone.register()) == "SIP/2.0 200 OK"
    config = server.workdir / "sipserver.toml"
    config.write_text(config.read_text().replace("min_expires = 60", "min_expires = 30"))
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    sipp = caller(invite_expecting(tmp_path / "486.xml", 486), server)
    busy_here(phone)
    finished(sipp)
    assert server.events("registration_removed") == []
    without = config.read_text().replace('"phone1"', '"phone2"').replace("phone1.", "phone2.")
    config.write_text(without)
    server.process.send_signal(signal.SIGHUP)
    removed = server.wait_for("registration_removed", number="7001")
    assert removed["reason"] == "peer no longer configured as a softphone"
    closed = server.wait_for("connection_closed", remote=f"127.0.0.1:{phone.local_port}")
    assert closed["reason"] == "peer removed from the configuration"
