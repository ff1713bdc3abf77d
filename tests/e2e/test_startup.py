"""Start-up, certificate generation and logging, bind errors, reload."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from sipserver.pki.certinfo import serial_hex
from tests.e2e.conftest import REPO, Pki, StartServer, served_serial
from tests.e2e.sip_client import options, status_line, udp_exchange

pytestmark = pytest.mark.e2e
HEX_UPPER = re.compile(r"^[0-9A-F]+$")


def test_without_a_certificate_one_is_generated_with_a_private_key_file(
    start_server: StartServer,
) -> None:
    server = start_server(with_certificate=False)
    generated = server.wait_for("server_certificate_generated")
    cert_path, key_path = Path(generated["path"]), Path(generated["key_path"])
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sip.example.test"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o._name for o in eku} == {"serverAuth", "clientAuth"}
    selected = server.wait_for("server_certificate_selected")
    assert selected["path"] == str(cert_path)
    assert selected["thumbprint_sha1"] == generated["thumbprint_sha1"]


def test_selected_certificate_event_has_every_field_in_admin_form(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server()
    event = server.wait_for("server_certificate_selected")
    for key in (
        "subject",
        "issuer",
        "serial",
        "thumbprint_sha1",
        "thumbprint_sha256",
        "not_before",
        "not_after",
        "path",
    ):
        assert event.get(key), key
    assert HEX_UPPER.match(event["serial"]) and HEX_UPPER.match(event["thumbprint_sha1"])
    assert len(event["thumbprint_sha256"]) == 64 and HEX_UPPER.match(event["thumbprint_sha256"])
    assert event["issuer"] == "CN=sipserver test CA"
    assert event["serial"] == serial_hex(pki.server.cert.serial_number)


def run_on(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sipserver", "run", "--address", "127.0.0.1", *args]
    return subprocess.run(
        [*command, "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SIPSERVER_STATE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_port_in_use_is_one_line_and_exit_code_2(tmp_path: Path, kind: int) -> None:
    """Whichever listener finds the port taken (TCP is opened inside the server's nursery,
    which wraps the error): one server_start_failed event, one line on stderr."""
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        result = run_on(tmp_path, "--sip-port", str(port), "--tls-port", "0")
    transport = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    assert result.returncode == 2
    assert result.stderr == (
        f"sipserver: cannot start: cannot listen on {transport} 127.0.0.1:{port}: address "
        "already in use (another SIP server running?)\n"
    )
    failed = [json.loads(line) for line in result.stdout.splitlines() if "start_failed" in line]
    assert [(f["event"], f["key"]) for f in failed] == [("server_start_failed", "server.sip_port")]
    assert "Traceback" not in result.stdout + result.stderr


def test_admin_address_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "admin.toml"
        config.write_text(
            f'[server]\nsip_port = 0\ntls_port = 0\n[admin]\naddress = "127.0.0.1:{port}"\n'
        )
        result = run_on(tmp_path, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sipserver: cannot start: cannot listen on admin.address")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stdout


def test_sighup_reload_applies_a_good_file_and_keeps_running_on_a_bad_one(
    start_server: StartServer,
) -> None:
    server = start_server(peer_addresses='"::1"')
    port = server.sip_port
    assert status_line(udp_exchange("127.0.0.1", port, options("127.0.0.1", port))).startswith(
        "SIP/2.0 403"
    )
    config = server.workdir / "sipserver.toml"
    good = config.read_text().replace('addresses = ["::1"]', 'addresses = ["::1", "127.0.0.1"]')
    config.write_text(good.replace("[limits]", "[limits]\nmax_conections = 1"))
    server.process.send_signal(signal.SIGHUP)
    failed = server.wait_for("config_reload_failed")
    assert (
        "limits.max_conections" in failed["error"]
        and "did you mean 'max_connections'" in failed["error"]
    )
    assert status_line(udp_exchange("127.0.0.1", port, options("127.0.0.1", port))).startswith(
        "SIP/2.0 403"
    )
    config.write_text(good)
    server.process.send_signal(signal.SIGHUP)
    server.wait_for("config_reloaded")
    assert (
        status_line(udp_exchange("127.0.0.1", port, options("127.0.0.1", port))) == "SIP/2.0 200 OK"
    )


def test_a_misspelled_certificate_folder_stops_the_start_instead_of_a_new_certificate(
    tmp_path: Path,
) -> None:
    """Only the default state folders are created: a folder named in the configuration
    that does not exist is a mistake, as check-config says, not a place for a new
    self-signed certificate."""
    config = tmp_path / "typo.toml"
    misspelled = tmp_path / "certz"
    config.write_text(
        f'[server]\nsip_port = 0\ntls_port = 0\n[tls]\ncertificate_dir = "{misspelled}"\n'
    )
    result = run_on(tmp_path, "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"sipserver: cannot start: tls.certificate_dir: folder {misspelled} does not exist "
        "(create it, or correct the path)\n"
    )
    failed = [json.loads(line) for line in result.stdout.splitlines() if "start_failed" in line]
    assert [f["key"] for f in failed] == ["tls.certificate_dir"]
    assert not misspelled.exists() and "Traceback" not in result.stdout


def test_a_reload_with_a_missing_trust_folder_keeps_the_running_one(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server()
    config = server.workdir / "sipserver.toml"
    missing = server.workdir / "no-such-trust"
    text = config.read_text()
    config.write_text(text.replace(str(pki.root / "trust"), str(missing)))
    server.process.send_signal(signal.SIGHUP)
    failed = server.wait_for("config_reload_failed")
    assert (
        failed["key"] == "tls.trust_dir" and f"folder {missing} does not exist" in failed["error"]
    )
    assert server.events("config_reloaded") == [] and server.events("trust_anchors_missing") == []
    # TLS peers are still checked against the trust anchors that were running.
    assert served_serial(server.tls_port, pki) == pki.server.cert.serial_number
    assert server.wait_for("tls_peer_accepted", peer="gw1")["peer"] == "gw1"


def test_sigterm_stops_cleanly(start_server: StartServer) -> None:
    server = start_server()
    assert server.stop() == 0
    server.wait_for("server_stopped")


def test_expiry_warnings_and_the_switch_when_the_certificate_in_use_expires(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    import datetime as dt

    from tests.certs import NOW, make_ca, make_leaf

    short = make_leaf(
        pki.ca,
        dns=["sip.example.test"],
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5),
    )
    fallback = make_leaf(None, dns=["sip.example.test"])
    expiring_ca = make_ca("Expiring CA", not_after=NOW + dt.timedelta(days=5, hours=1))
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "ca.crt").write_bytes(pki.ca.cert_pem)
    (trust / "expiring.crt").write_bytes(expiring_ca.cert_pem)
    server = start_server(
        certificates={"short": short, "fallback": fallback},
        trust_dir=trust,
        tls_extra="certificate_check_interval = 0.5",
    )
    selected = server.wait_for("server_certificate_selected")
    assert selected["serial"] == serial_hex(short.cert.serial_number)  # CA-issued beats self-signed
    expiring = server.wait_for("server_certificate_expiring")
    assert expiring["days_left"] == 1 and expiring["serial"] == selected["serial"]
    anchor = server.wait_for("trust_anchor_expiring")
    assert anchor["subject"] == "CN=Expiring CA" and anchor["days_left"] == 6
    changed = server.wait_for("server_certificate_changed", timeout=20)
    assert changed["previous_thumbprint_sha1"] == selected["thumbprint_sha1"]
    assert changed["path"].endswith("fallback.crt")
    # Once a day: the hourly (here half-second) checks do not repeat the warning.
    assert len(server.events("server_certificate_expiring")) == 1
