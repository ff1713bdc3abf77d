"""`sipserver ping` and `sipserver certs` against a running server and real files."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from sipserver.pki.certinfo import serial_hex
from tests.certs import make_leaf
from tests.e2e.conftest import REPO, SERVER_FQDN, Pki, StartServer

pytestmark = pytest.mark.e2e


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipserver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_ping_success_over_udp_and_mutual_tls_shows_the_certificate(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server()
    udp = cli("ping", f"sip:127.0.0.1:{server.sip_port}")
    assert udp.returncode == 0 and " 200 OK in " in udp.stdout
    gw1 = pki.combined("gw1", pki.gw1)
    tls = cli(
        "ping",
        f"sip:127.0.0.1:{server.tls_port}",
        "--tls",
        "--cert",
        str(gw1),
        "--ca",
        str(pki.ca_file),
        "--server-name",
        SERVER_FQDN,
    )
    assert tls.returncode == 0, tls.stdout + tls.stderr
    assert f"serial               {serial_hex(pki.server.cert.serial_number)}" in tls.stdout
    assert "issuer               CN=sipserver test CA" in tls.stdout


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-client-cert", "the server wants a client certificate"),
        ("untrusted", "the server's certificate is not trusted"),
        ("name", "name mismatch: the server's certificate names"),
        ("not-allowed", "not on its allow-list"),
        ("refused", "connection refused"),
        ("silent", "no answer within 1 s"),
        ("reset", "the far end reset the connection"),
        ("server-auth-only", "needs the clientAuth extended key usage"),
    ],
)
def test_ping_explains_each_failure_in_one_line(
    start_server: StartServer, pki: Pki, tmp_path: Path, case: str, expected: str
) -> None:
    server = start_server()
    port = str(server.tls_port)
    gw1, ca = str(pki.combined("gw1", pki.gw1)), str(pki.ca_file)
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(make_leaf(None, dns=["x.test"]).cert_pem)
    stranger = str(pki.combined("stranger", make_leaf(pki.ca, dns=["gw9.example.test"])))
    server_only = make_leaf(
        pki.ca, dns=["gw1.example.test"], ekus=[x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    )
    server_auth_only = str(pki.combined("server-only", server_only))
    args = {
        "no-client-cert": ["--tls", "--ca", ca, "--server-name", SERVER_FQDN],
        "untrusted": ["--tls", "--cert", gw1, "--ca", str(other_ca), "--server-name", SERVER_FQDN],
        "name": ["--tls", "--cert", gw1, "--ca", ca, "--server-name", "other.example.test"],
        "not-allowed": ["--tls", "--cert", stranger, "--ca", ca, "--server-name", SERVER_FQDN],
        "refused": ["--tcp"],
        "silent": ["--tcp"],
        "reset": ["--tcp"],
        "server-auth-only": [
            "--tls",
            "--cert",
            server_auth_only,
            "--ca",
            ca,
            "--server-name",
            SERVER_FQDN,
        ],
    }[case]
    import socket
    import struct
    import threading

    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP (in the kernel) but never answers
    resetting = socket.create_server(("127.0.0.1", 0))

    def reset_each() -> None:  # accept, then close with RST (SO_LINGER 0)
        with contextlib.suppress(OSError):
            while True:
                conn, _ = resetting.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.recv(1)
                conn.close()

    threading.Thread(target=reset_each, daemon=True).start()
    targets = {
        "refused": "sip:127.0.0.1:9",
        "silent": f"sip:127.0.0.1:{silent.getsockname()[1]}",
        "reset": f"sip:127.0.0.1:{resetting.getsockname()[1]}",
    }
    with silent, resetting:
        result = cli(
            "ping",
            targets.get(case, f"sip:127.0.0.1:{port}"),
            *args,
            "--timeout",
            "1" if case == "silent" else "3",
        )
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "FAILED" in lines[0] and expected in lines[0], (
        result.stdout + result.stderr
    )


def test_certs_show_export_and_lab_pki(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    made = cli(
        "certs",
        "lab-pki",
        "--out",
        str(lab),
        "--server",
        "sip.example.test",
        "--peer",
        "gw1.example.test",
    )
    assert made.returncode == 0 and "lab PKI written" in made.stdout
    assert (
        oct((lab / "sipserver" / "server" / "sip.example.test.key").stat().st_mode & 0o777)
        == "0o600"
    )
    config = tmp_path / "sip.toml"
    config.write_text(
        f'[server]\nfqdn = "sip.example.test"\n[tls]\ncertificate_dir = "{lab / "sipserver" / "server"}"\n'
        f'trust_dir = "{lab / "sipserver" / "trust"}"\n'
    )
    make_leaf(None, dns=["other.example.test"]).write_pair(
        lab / "sipserver" / "server", "wrong-name"
    )
    make_leaf(None, dns=["sip.example.test"]).write_pair(lab / "sipserver" / "server", "selfie")
    shown = cli("certs", "show", "--config", str(config), "--json")
    assert shown.returncode == 0
    listing = json.loads(shown.stdout)
    assert listing["config"] == str(config)
    rows = listing["certificates"]
    assert [(r["status"], r["why"].split(";")[-1].strip()) for r in rows] == [
        ("in use", "ranked first"),
        ("usable (rank 2)", "after rank 1: CA-issued certificates come before self-signed ones"),
        ("not usable", "no SAN covers the server FQDN sip.example.test"),
    ]
    assert rows[0]["why"].startswith("CA-issued, serverAuth and clientAuth, ")
    assert rows[0]["issuer"] == "CN=sipserver lab CA,O=sipserver lab" and rows[0]["ekus"] == [
        "serverAuth",
        "clientAuth",
    ]
    table = cli("certs", "show", "--config", str(config))
    assert "[in use]" in table.stdout and rows[0]["thumbprint_sha1"] in table.stdout
    assert f"configuration: {config.resolve()}" in table.stdout
    assert f"    why      {rows[1]['why']}" in table.stdout
    out = tmp_path / "ours.der"
    assert (
        cli("certs", "export", "--config", str(config), "--der", "--out", str(out)).returncode == 0
    )
    exported = x509.load_der_x509_certificate(out.read_bytes())
    assert serial_hex(exported.serial_number) == rows[0]["serial"]
    peer = x509.load_pem_x509_certificate(
        (lab / "peers" / "gw1.example.test" / "gw1.example.test.crt").read_bytes()
    )
    assert peer.issuer == exported.issuer


def test_ping_shows_why_a_request_was_refused_and_survives_a_closed_pipe(
    start_server: StartServer,
) -> None:
    server = start_server(peer_addresses='"192.0.2.99"')  # we are not a peer: 403 + Warning
    result = cli("ping", f"sip:127.0.0.1:{server.sip_port}")
    assert result.returncode == 1
    assert "403 Forbidden" in result.stdout
    assert "warning: 399" in result.stdout and "not an address of any configured" in result.stdout
    piped = subprocess.run(
        f"{sys.executable} -m sipserver ping sip:127.0.0.1:{server.sip_port} --count 3 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def test_ping_with_a_certificate_it_cannot_use_says_which_file_in_one_line(
    pki: Pki, tmp_path: Path
) -> None:
    cert_only = tmp_path / "cert-only.pem"
    cert_only.write_bytes(pki.gw1.cert_pem)
    cases = {
        ("--cert", str(tmp_path / "missing.pem")): "missing.pem: no such file",
        ("--cert", str(cert_only)): "cert-only.pem: no private key in it",
        ("--ca", str(tmp_path / "none.pem")): "--ca " + str(tmp_path / "none.pem") + ": no such",
    }
    for args, expected in cases.items():
        result = cli("ping", "sip:127.0.0.1:9", "--tls", *args)  # fails before connecting
        assert result.returncode == 1
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1 and "FAILED: cannot use" in lines[0] and expected in lines[0], (
            result.stdout + result.stderr
        )
        assert "Traceback" not in result.stderr


def test_lab_pki_adds_a_peer_to_an_existing_lab_ca(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    common = ("certs", "lab-pki", "--out", str(lab), "--server", "sip.example.test")
    assert cli(*common, "--peer", "gw1.example.test").returncode == 0
    ca_before = (lab / "ca" / "ca.crt").read_bytes()
    server_before = (lab / "sipserver" / "server" / "sip.example.test.crt").read_bytes()
    gw1 = (lab / "peers" / "gw1.example.test" / "gw1.example.test.crt").read_bytes()
    added = cli(*common, "--peer", "pbx1.example.test")
    assert added.returncode == 0 and "added to the existing lab CA" in added.stdout
    # The CA, our certificate and gw1's stay: everything issued earlier is still trusted.
    assert (lab / "ca" / "ca.crt").read_bytes() == ca_before
    assert (lab / "sipserver" / "server" / "sip.example.test.crt").read_bytes() == server_before
    assert (lab / "peers" / "gw1.example.test" / "gw1.example.test.crt").read_bytes() == gw1
    ca = x509.load_pem_x509_certificate(ca_before)
    pbx1 = x509.load_pem_x509_certificate(
        (lab / "peers" / "pbx1.example.test" / "pbx1.example.test.crt").read_bytes()
    )
    assert pbx1.issuer == ca.subject
    pbx1.verify_directly_issued_by(ca)
