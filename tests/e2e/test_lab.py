"""`sipserver lab` end to end, as a newcomer would use it: generate the lab, start the server
on the generated configuration, call the secured number with the generated baresip set-up
(mutual TLS, SRTP) and the other numbers with the generated sipp scenarios, over stunnel
with the generated configuration and over UDP; and call the registered baresip itself."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, RunningServer, free_baresip_port, free_port, need, run_server
from tests.e2e.peers import assert_sipp_ok, stunnel_with

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def lab_server(lab: Path) -> Iterator[RunningServer]:
    server = run_server(lab / "sipserver.toml", lab)
    try:
        yield server
    finally:
        server.stop()


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def sipp(
    scenario: Path, number: str, transport: str, target: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            need("sipp"),
            "-sf",
            str(scenario),
            "-s",
            number,
            "-t",
            transport,
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-nostdin",
            "-timeout",
            "30s",
            "-timeout_error",
            target,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=scenario.parent,
    )


def test_a_generated_lab_answers_its_first_mutual_tls_calls(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    sip, tls, tunnel = (free_port() for _ in range(3))
    pbx = free_port()
    while not _free(pbx + 1):  # its sipp listens on the next port
        pbx = free_port()
    phone = free_baresip_port()
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipserver",
            "lab",
            "--out",
            str(lab),
            "--sip-port",
            str(sip),
            "--tls-port",
            str(tls),
            "--phone-port",
            str(phone),
            "--tunnel-port",
            str(tunnel),
            "--pbx-port",
            str(pbx),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert f"sipserver run --config {lab.resolve() / 'sipserver.toml'}" in made.stdout
    assert f"baresip -f {lab.resolve() / 'baresip'}" in made.stdout
    with lab_server(lab) as server:
        # 1. The softphone, exactly as generated, calls the secured number: SRTP end to end.
        phone_run = subprocess.run(
            [
                need("baresip"),
                "-f",
                str(lab / "baresip"),
                "-e",
                "/dial sip:7002@sip.example.test",
                "-t",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        answered = server.wait_for("call_answered", number="7002")
        assert answered["peer"] == "phone1" and answered["transport"] == "tls"
        assert answered["media"] == ["audio RTP/SAVP with SDES keys"]
        assert answered["peer_cert_subject"] == "CN=phone1.example.test"
        assert "SRTP is Enabled" in phone_run.stdout + phone_run.stderr
        assert "Call established" in phone_run.stdout + phone_run.stderr
        ended = server.wait_for("answered_call_ended", dial_plan="echo-secured")
        assert ended["ended_by"] == "caller_bye" and ended["duration_s"] >= 1.0  # stayed up
        # 2. sipp as gw1 through the generated stunnel, to the sip-secured number.
        with stunnel_with(lab / "stunnel" / "gw1.conf"):
            assert_sipp_ok(sipp(lab / "sipp" / "caller.xml", "7001", "t1", f"127.0.0.1:{tunnel}"))
            srtp = sipp(lab / "sipp" / "caller-srtp.xml", "7002", "t1", f"127.0.0.1:{tunnel}")
            assert_sipp_ok(srtp)
            # 2b. The softphone's own number: baresip, as generated, registers and answers.
            baresip = subprocess.Popen(
                [need("baresip"), "-f", str(lab / "baresip"), "-t", "30"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                registrations = len(server.events("registration_added"))
                server.wait_until(
                    lambda _: len(server.events("registration_added")) > registrations,
                    20,
                    "baresip's registration",
                )
                ring = sipp(lab / "sipp" / "caller-srtp.xml", "7100", "t1", f"127.0.0.1:{tunnel}")
                assert_sipp_ok(ring)
            finally:
                baresip.terminate()
                baresip.communicate(timeout=20)
            to_phone = server.wait_for("call_routed", dial_plan="phone1")
            assert (to_phone["target"], to_phone["target_transport"]) == ("phone1", "tls")
            assert to_phone["target_cert_subject"] == "CN=phone1.example.test"
        tunnelled = server.wait_for("call_answered", number="7001")
        assert tunnelled["peer"] == "gw1" and tunnelled["transport"] == "tls"
        secured = server.wait_for("call_answered", number="7002", peer="gw1")
        assert secured["media"] == ["audio RTP/SAVP with SDES keys"]
        # 3. sipp as gw1 over UDP, to the unsecured number.
        assert_sipp_ok(sipp(lab / "sipp" / "caller.xml", "7000", "u1", f"127.0.0.1:{sip}"))
        assert server.wait_for("call_answered", number="7000")["transport"] == "udp"
        # 4. gw1 -> sipserver -> pbx1 with mutual TLS on both legs, as printed: the
        # generated stunnels on each side, the generated callee behind pbx1's.
        assert f"-p {pbx + 1} -m 1    # pbx1" in made.stdout
        callee = subprocess.Popen(
            [
                need("sipp"),
                "-sf",
                str(lab / "sipp" / "callee.xml"),
                "-t",
                "t1",
                "-i",
                "127.0.0.1",
                "-p",
                str(pbx + 1),
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30s",
                "-timeout_error",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=lab / "sipp",
        )
        try:
            with (
                stunnel_with(lab / "stunnel" / "pbx1.conf"),
                stunnel_with(lab / "stunnel" / "gw1.conf"),
            ):
                caller = sipp(lab / "sipp" / "caller.xml", "7200", "t1", f"127.0.0.1:{tunnel}")
                assert_sipp_ok(caller)
                assert callee.wait(30) == 0, callee.stdout.read() if callee.stdout else ""
        finally:
            if callee.poll() is None:
                callee.kill()
        routed = server.wait_for("call_routed", dial_plan="to-pbx1")
        assert (routed["status"], routed["target"], routed["target_transport"]) == (
            200,
            "pbx1",
            "tls",
        )
        assert routed["peer"] == "gw1" and routed["transport"] == "tls"
        assert routed["target_cert_subject"] == "CN=pbx1.example.test"


def test_the_lab_baresip_takes_commands_from_the_terminal(tmp_path: Path) -> None:
    """The generated baresip loads stdio: /quit (and /hangup) typed in its terminal work."""
    lab = tmp_path / "lab"
    made = subprocess.run(
        [sys.executable, "-m", "sipserver", "lab", "--out", str(lab)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert made.returncode == 0, made.stderr
    pid, terminal = pty.fork()
    if pid == 0:  # the child: baresip on a terminal of its own
        os.execv(need("baresip"), ["baresip", "-f", str(lab / "baresip")])
    seen = b""
    deadline = time.monotonic() + 20
    typed = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.5)
        if ready:
            with contextlib.suppress(OSError):  # the terminal closes when baresip exits
                seen += os.read(terminal, 4096)
        if not typed and b"baresip is ready" in seen:
            os.write(terminal, b"/quit\n")
            typed = True
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError(seen.decode(errors="replace")[-2000:])
    os.close(terminal)
    assert typed and os.waitstatus_to_exitcode(status) == 0
    assert b"Quit" in seen
