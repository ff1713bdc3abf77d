"""Interop: Linphone (Debian's linphone-cli 5.1, `linphonec` on a terminal of its own) as
a softphone with its own client certificate, configured as docs/interop.md shows: it
registers over mutual TLS, calls the number sipserver answers in each security mode, and
answers a gateway's secured call over the connection it registered on.

Linphone checks our certificate against the proxy's host name, so the proxy is given by
name (`sip.example.test`), as in production. belle-sip reads /etc/hosts itself (no
resolver option), so linphonec runs in a private mount namespace in which a hosts file
of the test's own names /etc/hosts; the machine's file is not touched."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipserver.pki.certinfo import serial_hex
from tests.certs import Issued, make_leaf
from tests.configs import answer_plan, dial_plan, peer
from tests.e2e.conftest import SERVER_FQDN, Pki, StartServer, need
from tests.e2e.peers import assert_sipp_ok, sipp_caller, stunnel_client
from tests.e2e.sipp_scenarios import call_uac

pytestmark = pytest.mark.e2e

PHONE_NUMBER = "7101"
ANSWERING = {"unsecured": "7000", "sip-secured": "7001", "secured": "7002"}


REPO = Path(__file__).resolve().parents[2]


def documented_linphonerc() -> str:
    """The `linphonerc` block of docs/interop.md."""
    text = (REPO / "docs" / "interop.md").read_text()
    section = text[text.index("- **Linphone**") :]
    return section.split("```ini\n", 1)[1].split("```", 1)[0]


def linphonerc(folder: Path, pki: Pki, cert: Issued, tls_port: int) -> Path:
    """docs/interop.md's linphonerc as written, with this test's paths and port."""
    peer_folder = "/path/to/lab/peers/phone2.example.test/"
    documented = "\n".join(line.strip() for line in documented_linphonerc().splitlines())
    assert peer_folder in documented and f"{SERVER_FQDN}:5061;" in documented, documented
    cert_path, key_path = cert.write_pair(folder, "phone2.example.test")
    shutil.copy(pki.ca_file, folder / "ca.crt")
    assert (cert_path.name, key_path.name) == ("phone2.example.test.crt", "phone2.example.test.key")
    rc = folder / "linphonerc"
    rc.write_text(
        documented.replace(peer_folder, f"{folder}/").replace(
            f"{SERVER_FQDN}:5061;", f"{SERVER_FQDN}:{tls_port};"
        )
    )
    return rc


class Linphonec:
    """linphonec on a pseudo-terminal (it reads commands with readline), auto-answering."""

    def __init__(self, folder: Path, rc: Path) -> None:
        need("linphonec")
        hosts = folder / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {SERVER_FQDN}\n")
        home = folder / "home"
        # Without its database folder, linphonec 5.1 starts no SIP transport at all.
        (home / ".local" / "share" / "linphone").mkdir(parents=True)
        self.log = folder / "linphone.log"
        script = f"mount --bind {hosts} /etc/hosts && exec linphonec -c {rc} -a -d 5 -l {self.log}"
        self.pid, self.terminal = pty.fork()
        if self.pid == 0:  # the child
            os.environ["HOME"] = str(home)
            unshare = shutil.which("unshare") or "unshare"
            os.execv(unshare, [unshare, "--mount", "--propagation", "private", "sh", "-c", script])
        self.seen = ""
        self.wait_for(r"linphonec> ")
        self.command("soundcard use files")  # no sound card: wav files in and out

    def command(self, text: str) -> None:
        os.write(self.terminal, text.encode() + b"\n")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of `pattern` in linphonec's output (since the last match)."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end() :]
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"linphonec never printed {pattern!r}:\n{self.seen[-3000:]}")
            ready, _, _ = select.select([self.terminal], [], [], min(left, 0.5))
            if ready:
                with contextlib.suppress(OSError):  # the terminal closes when it exits
                    self.seen += os.read(self.terminal, 65536).decode(errors="replace")

    def quit(self) -> int:
        self.command("quit")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if select.select([self.terminal], [], [], 0.5)[0]:
                    os.read(self.terminal, 65536)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                os.close(self.terminal)
                return os.waitstatus_to_exitcode(status)
        self.kill()
        raise AssertionError("linphonec did not quit")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)


@contextlib.contextmanager
def linphonec(folder: Path, rc: Path) -> Iterator[Linphonec]:
    phone = Linphonec(folder, rc)
    try:
        yield phone
    finally:
        phone.kill()


def test_linphone_registers_calls_each_answering_number_and_answers_a_gateway(
    start_server: StartServer, pki: Pki, tmp_path: Path
) -> None:
    need("unshare")
    phone_cert = make_leaf(pki.ca, dns=["phone2.example.test"])
    config = peer(
        "phone2", kind="softphone", addresses=[], numbers=[PHONE_NUMBER], health_check=None
    )
    for security, number in ANSWERING.items():
        config += answer_plan(security, name=f"echo-{security}", numbers=[number], from_=["phone2"])
    config += dial_plan("phone2", "secured", ["phone2"], numbers=[PHONE_NUMBER])
    server = start_server(extra_config=config)
    rc = linphonerc(tmp_path, pki, phone_cert, server.tls_port)
    with linphonec(tmp_path, rc) as phone:
        added = server.wait_for("registration_added", number=PHONE_NUMBER, timeout=30)
        # Linphone sends +sip.instance without reg-id: a plain (non-outbound) binding.
        assert (added["peer"], added["transport"]) == ("phone2", "tls")
        assert added["instance"] and added.get("reg_id") is None, added

        for call, (security, number) in enumerate(ANSWERING.items(), start=1):
            phone.command(f"call sip:{number}@{SERVER_FQDN}")
            phone.wait_for(rf"Call {call} with sip:{number}@\S+ connected")
            answered = server.wait_for("call_answered", dial_plan=f"echo-{security}")
            assert answered["peer"] == "phone2" and answered["security"] == security
            assert answered["peer_cert_serial"] == serial_hex(phone_cert.cert.serial_number)
            phone.command("terminate")
            phone.wait_for(rf"Call {call} with sip:{number}@\S+ ended")
            ended = server.wait_for("answered_call_ended", dial_plan=f"echo-{security}")
            assert ended["ended_by"] == "caller_bye"

        # A gateway's secured call (SRTP offered) reaches Linphone over its registration.
        uac = call_uac(tmp_path / "uac.xml", proto="RTP/SAVP", crypto=True)
        with stunnel_client(pki, tmp_path, server.tls_port) as gateway:
            assert_sipp_ok(sipp_caller(uac, gateway, PHONE_NUMBER, "t1"))
        routed = server.wait_for("call_routed", dial_plan="phone2")
        assert (routed["status"], routed["target"], routed["target_transport"]) == (
            200,
            "phone2",
            "tls",
        )
        assert routed["target_cert_serial"] == serial_hex(phone_cert.cert.serial_number)
        assert server.events("security_violation_media_answer") == []

        assert phone.quit() == 0
    removed = server.wait_for("registration_removed", number=PHONE_NUMBER, timeout=20)
    assert removed["reason"] in ("unregistered (expires 0)", "connection closed: closed by peer")
    # It negotiates TLS 1.2, as docs/interop.md says.
    accepted = server.wait_for("tls_peer_accepted", peer="phone2")
    assert accepted["tls_version"] == "TLSv1.2", accepted
