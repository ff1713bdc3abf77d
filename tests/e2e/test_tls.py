"""Mutual TLS on the TLS port: allow-listed peers get in, everyone else is refused with
the exact reason in the log."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import NOW, Issued, make_ca, make_leaf
from tests.e2e.conftest import (
    SCENARIOS,
    SERVER_FQDN,
    Pki,
    RunningServer,
    StartServer,
    need,
)
from tests.e2e.peers import stunnel_client
from tests.e2e.sip_client import options, read_response, status_line

pytestmark = pytest.mark.e2e


def client_context(
    pki: Pki, cert: Issued | None, name: str, *, tls12: bool = False
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        cert_path, key_path = pki.client_files(name, cert)
        context.load_cert_chain(str(cert_path), str(key_path))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_options(server: RunningServer, context: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """Send OPTIONS over TLS; returns the response, or b"" if the server hung up."""
    port = server.tls_port
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_FQDN) as tls,
    ):
        tls.sendall(options(host, port, "TLS"))
        try:
            return read_response(tls)
        except (ssl.SSLError, ConnectionResetError):
            return b""


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_allow_listed_peer_gets_200_over_mutual_tls(
    start_server: StartServer, pki: Pki, host: str
) -> None:
    server = start_server()
    reply = tls_options(server, client_context(pki, pki.gw1, "gw1"), host)
    assert status_line(reply) == "SIP/2.0 200 OK"
    accepted = server.wait_for("tls_peer_accepted", peer="gw1")
    gw1 = pki.gw1.cert
    assert accepted["peer_fqdn"] == "gw1.example.test"
    assert accepted["identity_source"] == "san_dns"
    assert accepted["peer_cert_issuer"] == "CN=sipserver test CA"
    assert accepted["peer_cert_serial"] == serial_hex(gw1.serial_number)
    assert len(accepted["peer_cert_thumbprint_sha1"]) == 40
    selected = server.wait_for("server_certificate_selected")
    assert accepted["our_thumbprint_sha1"] == selected["thumbprint_sha1"]
    assert accepted["tls_version"] == "TLSv1.3"
    # The connection's context is bound to every later event on it.
    answered = server.wait_for("sip_request_answered", transport="tls")
    assert answered["peer_fqdn"] == "gw1.example.test"
    assert answered["peer_cert_thumbprint_sha256"] == accepted["peer_cert_thumbprint_sha256"]


def tls_options_resuming(
    server: RunningServer, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """OPTIONS over a new TLS connection that offers `session` for resumption: the
    response, the session to resume next time, and whether this one was resumed."""
    with (
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_FQDN, session=session) as tls,
    ):
        tls.sendall(options("127.0.0.1", server.tls_port, "TLS"))
        try:
            reply = read_response(tls)
        except (ssl.SSLError, ConnectionResetError):
            reply = b""
        return reply, tls.session, bool(tls.session_reused)


@pytest.mark.parametrize("tls12", [False, True])
def test_a_peer_resumes_its_session_and_is_still_checked_against_the_allow_list(
    start_server: StartServer, pki: Pki, tls12: bool
) -> None:
    """A gateway that opens a connection per call resumes its TLS session (no certificate
    sent, none verified: much cheaper for both ends); the allow-list still decides."""
    server = start_server()
    context = client_context(pki, pki.gw1, "gw1", tls12=tls12)
    reply, session, resumed = tls_options_resuming(server, context, None)
    assert status_line(reply) == "SIP/2.0 200 OK" and not resumed
    first = server.wait_for("tls_peer_accepted", tls_session_resumed=False)
    reply, _, resumed = tls_options_resuming(server, context, session)
    assert status_line(reply) == "SIP/2.0 200 OK" and resumed
    again = server.wait_for("tls_peer_accepted", tls_session_resumed=True)
    assert again["peer"] == "gw1"
    assert again["peer_cert_thumbprint_sha256"] == first["peer_cert_thumbprint_sha256"]

    config = server.workdir / "sipserver.toml"
    reloads = len(server.events("config_reloaded"))
    config.write_text(
        config.read_text().replace('fqdn = "gw1.example.test"', 'fqdn = "gw7.example.test"')
    )
    server.wait_until(lambda _: len(server.events("config_reloaded")) > reloads, 15, "a reload")
    reply, _, _ = tls_options_resuming(server, context, session)
    assert reply == b""
    event = server.wait_for("tls_peer_refused", reason="not_on_allow_list")
    assert event["closest_fqdn"] == "gw7.example.test"
    assert event["tls_session_resumed"] is False  # a reload drops the sessions it held
    assert event["peer_cert_thumbprint_sha256"] == first["peer_cert_thumbprint_sha256"]


def test_tls12_peer_gets_an_aead_suite(start_server: StartServer, pki: Pki) -> None:
    server = start_server()
    reply = tls_options(server, client_context(pki, pki.gw1, "gw1", tls12=True))
    assert status_line(reply) == "SIP/2.0 200 OK"
    accepted = server.wait_for("tls_peer_accepted")
    assert accepted["tls_version"] == "TLSv1.2"
    assert "GCM" in accepted["cipher"] or "CHACHA20" in accepted["cipher"]


def refused(server: RunningServer, reason: str) -> dict[str, object]:
    event = server.wait_for("tls_peer_refused", reason=reason)
    assert server.events("tls_peer_accepted") == []
    return event


def test_no_client_certificate_is_refused(start_server: StartServer, pki: Pki) -> None:
    server = start_server()
    assert tls_options(server, client_context(pki, None, "none")) == b""
    event = refused(server, "no_client_certificate")
    assert "requires mutual TLS" in str(event["detail"])


def test_untrusted_ca_is_refused_naming_the_certificate(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server()
    rogue = make_leaf(make_ca("Rogue CA"), dns=["gw1.example.test"])
    assert tls_options(server, client_context(pki, rogue, "rogue")) == b""
    event = refused(server, "untrusted_chain")
    assert event["peer_cert_issuer"] == "CN=Rogue CA"
    assert event["presented_names"] == ["gw1.example.test"]
    assert "trust_dir" in str(event["detail"])


def test_a_refused_chain_names_the_peers_own_certificate_and_the_untrusted_issuer(
    start_server: StartServer, pki: Pki
) -> None:
    """Most TLS stacks send their leaf and its CA: the refusal must still describe the
    leaf (whose it is), and name the issuer that was not trusted separately."""
    server = start_server()
    other_ca = make_ca("Other Untrusted CA")
    leaf = make_leaf(other_ca, dns=["gw1.example.test"])
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(
        str(leaf.write_combined(pki.root / "clients" / "chain.pem", [other_ca]))
    )
    assert tls_options(server, context) == b""
    event = refused(server, "untrusted_chain")
    assert event["peer_cert_subject"] == "CN=gw1.example.test"
    assert event["presented_names"] == ["gw1.example.test"]
    assert event["peer_cert_serial"] == serial_hex(leaf.cert.serial_number)
    assert event["untrusted_issuer"] == "CN=Other Untrusted CA"
    assert "CN=Other Untrusted CA" in str(event["detail"]), event["detail"]


def test_self_signed_client_is_refused(start_server: StartServer, pki: Pki) -> None:
    server = start_server()
    selfie = make_leaf(None, dns=["gw1.example.test"])
    assert tls_options(server, client_context(pki, selfie, "selfie")) == b""
    assert refused(server, "untrusted_chain")["verify_error"] == 18


def test_expired_certificate_is_refused(start_server: StartServer, pki: Pki) -> None:
    server = start_server()
    old = make_leaf(
        pki.ca,
        dns=["gw1.example.test"],
        not_before=NOW - dt.timedelta(days=400),
        not_after=NOW - dt.timedelta(days=2),
    )
    assert tls_options(server, client_context(pki, old, "old")) == b""
    event = refused(server, "certificate_expired")
    assert event["peer_cert_serial"] == serial_hex(old.cert.serial_number)


def test_not_yet_valid_certificate_is_refused(start_server: StartServer, pki: Pki) -> None:
    server = start_server()
    future = make_leaf(pki.ca, dns=["gw1.example.test"], not_before=NOW + dt.timedelta(days=2))
    assert tls_options(server, client_context(pki, future, "future")) == b""
    refused(server, "certificate_not_yet_valid")


def test_trusted_certificate_not_on_the_allow_list_is_refused_with_the_closest_fqdn(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server()
    stranger = make_leaf(pki.ca, dns=["gw7.example.test"])
    assert tls_options(server, client_context(pki, stranger, "gw7")) == b""
    event = refused(server, "not_on_allow_list")
    assert event["presented_names"] == ["gw7.example.test"]
    assert event["closest_fqdn"] == "gw1.example.test"
    assert "closest allow-listed FQDN is gw1.example.test" in str(event["detail"])


def test_wildcard_certificate_is_refused_unless_allowed(
    start_server: StartServer, pki: Pki
) -> None:
    server = start_server()
    wildcard = make_leaf(pki.ca, dns=["*.example.test"])
    assert tls_options(server, client_context(pki, wildcard, "wild")) == b""
    assert "allow_wildcard" in str(refused(server, "not_on_allow_list")["detail"])


def test_handshake_timeout_frees_the_connection(start_server: StartServer) -> None:
    server = start_server(handshake_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as sock:
        assert sock.recv(10) == b""  # we said nothing; the server hangs up
    event = server.wait_for("tls_peer_refused", reason="handshake_timeout")
    assert "tls.handshake_timeout" in str(event["detail"])


def test_plain_sip_sent_to_the_tls_port_is_explained(start_server: StartServer) -> None:
    server = start_server()
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as sock:
        sock.sendall(options("127.0.0.1", server.tls_port, "TCP"))
        try:
            while sock.recv(1000):
                pass
        except ConnectionResetError:
            pass
    assert "plain SIP belongs on the SIP port" in str(
        server.wait_for("tls_peer_refused", reason="not_tls")["detail"]
    )


def test_sipp_through_stunnel_with_a_client_certificate_gets_200(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    """sipp has no TLS in Debian, so stunnel4 carries its TCP over mutual TLS, presenting
    the gateway's certificate and verifying ours, as a real gateway would."""
    server = start_server()
    with stunnel_client(pki, tmp_path, server.tls_port) as local:
        result = subprocess.run(
            [
                need("sipp"),
                "-sf",
                str(SCENARIOS / "options_uac.xml"),
                "-t",
                "t1",
                "-i",
                "127.0.0.1",
                "-m",
                "20",
                "-r",
                "20",
                "-timeout",
                "20s",
                "-timeout_error",
                "-nostdin",
                f"127.0.0.1:{local}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout[-2000:]
    accepted = server.wait_for("tls_peer_accepted", peer="gw1")
    assert accepted["peer_cert_serial"] == serial_hex(pki.gw1.cert.serial_number)
    assert len(server.wait_count("sip_request_answered", 20, transport="tls", status=200)) == 20


def test_revoked_certificate_is_refused_naming_serial_and_crl(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    from tests.certs import make_crl

    revoked = make_leaf(pki.ca, dns=["gw1.example.test"])
    trust = tmp_path / "trust-with-crl"
    trust.mkdir()
    (trust / "ca.crt").write_bytes(pki.ca.cert_pem)
    (trust / "ca.crl").write_bytes(make_crl(pki.ca, [revoked]))
    server = start_server(extra_config="", trust_dir=trust)
    server.wait_for("crl_loaded", path=str(trust / "ca.crl"))
    assert tls_options(server, client_context(pki, revoked, "revoked")) == b""
    event = refused(server, "certificate_revoked")
    serial = serial_hex(revoked.cert.serial_number)
    assert f"serial {serial} was revoked" in str(event["detail"]) and event["crl"] == str(
        trust / "ca.crl"
    )
    assert status_line(tls_options(server, client_context(pki, pki.gw1, "gw1"))) == "SIP/2.0 200 OK"
