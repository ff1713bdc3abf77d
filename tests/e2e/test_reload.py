"""Hot reload under load: while sipp calls run through the proxy, the certificate and the
configuration are replaced many times; no call fails and new TLS connections get the new
certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import make_leaf
from tests.configs import one_target_plan
from tests.e2e.conftest import SERVER_FQDN, Pki, StartServer, free_port, served_serial
from tests.e2e.peers import assert_callee_ok, sipp_callee, sipp_caller_command
from tests.e2e.sipp_scenarios import call_uac, call_uas

pytestmark = pytest.mark.e2e
CALLS = 120


def test_reloading_certificates_and_config_under_call_load_loses_no_call(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    uas_port = free_port()
    plan = one_target_plan("unsecured", uas_port, "udp")
    server = start_server(
        extra_config=plan, server_extra="watch_interval = 0.2\nreload_debounce = 0.2"
    )
    config = server.workdir / "sipserver.toml"
    cert_dir = server.workdir / "server"
    with sipp_callee(call_uas(tmp_path / "uas.xml"), uas_port, calls=CALLS) as callee:
        caller = subprocess.Popen(
            sipp_caller_command(
                call_uac(tmp_path / "uac.xml"), server.sip_port, "5000", calls=CALLS, rate=20
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        serials = []
        for round_number in range(6):
            reloads = len(server.events("config_reloaded"))
            leaf = make_leaf(pki.ca, dns=[SERVER_FQDN])
            leaf.write_pair(
                cert_dir, "sip"
            )  # same file names, new certificate, as an ACME renewal does
            config.write_text(
                config.read_text()
                .replace(f"idle_timeout = {300 + round_number - 1}", "")
                .replace("[limits]", f"[limits]\nidle_timeout = {300 + round_number}", 1)
            )
            server.wait_until(
                lambda _, before=reloads: len(server.events("config_reloaded")) > before,  # type: ignore[misc]
                15,
                "a reload",
            )
            serials.append(leaf.cert.serial_number)
        assert served_serial(server.tls_port, pki) == serials[-1]
        out, _ = caller.communicate(timeout=90)
        assert caller.returncode == 0, out[-3000:]
        assert_callee_ok(callee)
    assert len(server.wait_count("call_routed", CALLS)) == CALLS
    assert server.events("config_reload_failed") == []
    selected = {e["serial"] for e in server.events("server_certificate_selected")}
    assert {serial_hex(s) for s in serials} <= selected
