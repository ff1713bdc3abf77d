"""Targets located through DNS (RFC 3263), against a real DNS server: dnsmasq on a loopback
port with NAPTR, SRV and A records. A call fails over from a dead priority-10 SRV target to
a live priority-20 one over mutual TLS, the target's certificate checked against the
peer's configured FQDN (RFC 5922 §4), not the SRV target's name; a failed lookup is a
clear log line and a failover step."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.certs import make_leaf
from tests.configs import dial_plan, peer, table
from tests.e2e.conftest import Pki, StartServer, free_port, need
from tests.e2e.peers import assert_callee_ok, assert_sipp_ok, sipp_callee, sipp_caller, stunnel
from tests.e2e.sipp_scenarios import call_uac, call_uas, invite_expecting

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def dnsmasq(records: list[str]) -> Iterator[int]:
    """dnsmasq answering only from `records` (authoritative for example.test), on a free
    loopback port; yields the port once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [
            need("dnsmasq"),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--log-facility=-",
            "--local=/example.test/",
            "--local-ttl=60",
            *records,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "cleared cache" in line or "read " in line:
                break
            if process.poll() is not None:
                pytest.fail(f"dnsmasq did not start: {line}")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def srv_records(dead: int, live: int) -> list[str]:
    return [
        "--naptr-record=pbx.example.test,10,10,S,SIPS+D2T,,_sips._tcp.pbx.example.test",
        f"--srv-host=_sips._tcp.pbx.example.test,pbx-a.example.test,{dead},10,10",
        f"--srv-host=_sips._tcp.pbx.example.test,pbx-b.example.test,{live},20,10",
        "--host-record=pbx-a.example.test,127.0.0.1",
        "--host-record=pbx-b.example.test,127.0.0.1",
    ]


def dns_config(dns_port: int, targets: tuple[str, ...] = ("pbx",)) -> str:
    return (
        peer("pbx", addresses=[], transport="tls", health_check=None)
        + dial_plan("main", "unsecured", list(targets))
        + table("dns", {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 3.0})
    )


@contextlib.contextmanager
def tls_pbx(pki: Pki, workdir: Path, backend: int, names: list[str]) -> Iterator[int]:
    """stunnel in front of a sipp callee, presenting a certificate for `names`."""
    cert = make_leaf(pki.ca, dns=names)
    listen = free_port()
    with stunnel(
        workdir,
        f"accept = 127.0.0.1:{listen}\nconnect = 127.0.0.1:{backend}\n"
        f"cert = {pki.combined('-'.join(names), cert)}\nCAfile = {pki.ca_file}\n"
        "verifyChain = yes\nrequireCert = yes\n",
    ):
        yield listen


def test_a_call_fails_over_from_a_dead_srv_target_to_the_next_priority_over_mutual_tls(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    dead, uas_port = free_port(), free_port()
    with (
        tls_pbx(pki, tmp_path, uas_port, ["pbx.example.test"]) as live,
        dnsmasq(srv_records(dead, live)) as dns_port,
    ):
        server = start_server(extra_config=dns_config(dns_port))
        with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, "t1") as callee:
            assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000"))
            assert_callee_ok(callee)
    located = server.wait_for("target_located", fqdn="pbx.example.test")
    assert located["how"] == "naptr+srv"
    assert located["destinations"] == [f"127.0.0.1:{dead}", f"127.0.0.1:{live}"]
    routed = server.wait_for("call_routed", dial_plan="main")
    assert routed["target_address"] == f"127.0.0.1:{live}"
    assert routed["failed_attempts"] == [f"pbx at 127.0.0.1:{dead}: connection refused"]
    accepted = server.wait_for("tls_target_accepted", target_fqdn="pbx.example.test")
    assert accepted["target_cert_subject"] == "CN=pbx.example.test"


def test_the_srv_target_must_prove_the_configured_fqdn_not_its_own_name(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    uas_port = free_port()
    # The live SRV target's certificate names pbx-b.example.test (the SRV target), not
    # pbx.example.test (the domain we looked up): RFC 5922 §4 says refuse it.
    with (
        tls_pbx(pki, tmp_path, uas_port, ["pbx-b.example.test"]) as live,
        dnsmasq(srv_records(free_port(), live)) as dns_port,
    ):
        server = start_server(extra_config=dns_config(dns_port))
        checks = {"Warning": "pbx at 127.0.0.1:[0-9]+: target_name_mismatch"}
        scenario = invite_expecting(tmp_path / "503.xml", 503, checks=checks)
        assert_sipp_ok(sipp_caller(scenario, server.sip_port, "5000"))
    failed = server.wait_for("outbound_connection_failed", remote=f"127.0.0.1:{live}")
    assert "target_name_mismatch" in failed["reason"]


def test_a_failed_lookup_is_logged_and_the_call_moves_to_the_next_target(
    start_server: StartServer, tmp_path: Path
) -> None:
    uas_port = free_port()
    with dnsmasq([]) as dns_port:
        config = dns_config(dns_port, ("pbx", "pbx1")) + peer(
            "pbx1", port=uas_port, transport="udp"
        )
        server = start_server(extra_config=config)
        with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port) as callee:
            assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000"))
            assert_callee_ok(callee)
    failed = server.wait_for("target_lookup_failed", fqdn="pbx.example.test")
    assert failed["reason"] == (
        "pbx.example.test has no SRV record (_sips._tcp.pbx.example.test) and no address"
    )
    routed = server.wait_for("call_routed", dial_plan="main")
    assert routed["target"] == "pbx1"
    assert routed["failed_attempts"] == [f"pbx: {failed['reason']}"]


@contextlib.contextmanager
def resolver_refusing_naptr(refusal: dns.rcode.Rcode, live: int) -> Iterator[int]:
    """A DNS server on a loopback port that answers NAPTR queries with `refusal` (as many
    corporate resolvers do) and SRV and A queries from its records; yields its port."""
    records = {
        ("_sips._tcp.pbx.example.test.", dns.rdatatype.SRV): f"10 10 {live} pbx-b.example.test.",
        ("pbx-b.example.test.", dns.rdatatype.A): "127.0.0.1",
    }
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            question = query.question[0]
            answer = records.get((question.name.to_text(), question.rdtype))
            if question.rdtype == dns.rdatatype.NAPTR:
                reply.set_rcode(refusal)
            elif answer is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                reply.answer.append(
                    dns.rrset.from_text(question.name, 60, "IN", question.rdtype, answer)
                )
            sock.sendto(reply.to_wire(), source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


@pytest.mark.parametrize(
    "refusal", [dns.rcode.SERVFAIL, dns.rcode.REFUSED], ids=["SERVFAIL", "REFUSED"]
)
def test_a_failed_naptr_query_goes_on_to_srv_and_the_call_connects(
    start_server: StartServer, pki: Pki, tmp_path: Path, refusal: dns.rcode.Rcode
) -> None:
    uas_port = free_port()
    with (
        tls_pbx(pki, tmp_path, uas_port, ["pbx.example.test"]) as live,
        resolver_refusing_naptr(refusal, live) as dns_port,
    ):
        server = start_server(extra_config=dns_config(dns_port))
        with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, "t1") as callee:
            assert_sipp_ok(sipp_caller(call_uac(tmp_path / "uac.xml"), server.sip_port, "5000"))
            assert_callee_ok(callee)
    located = server.wait_for("target_located", fqdn="pbx.example.test")
    assert (located["how"], located["destinations"]) == ("srv", [f"127.0.0.1:{live}"])
    assert "DNS NAPTR query for pbx.example.test failed" in located["naptr_failed"]
    assert server.wait_for("call_routed", dial_plan="main")["status"] == 200
