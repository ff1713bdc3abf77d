"""Two instances and a real Redis (Debian's redis-server): a phone registered on one is
reached by calls entering the other, both ways; the store stopped (calls to phones on the
instance they enter go on, others get 480 at once) and back empty (every instance publishes
its bindings again); an instance killed (calls for its phone get 480 within seconds, and
its bindings go)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import make_leaf
from tests.configs import dial_plan, peer, table
from tests.e2e.conftest import Pki, RunningServer, StartServer, free_port, need
from tests.e2e.peers import sipp_caller_command
from tests.e2e.sipp_scenarios import call_uac
from tests.e2e.softphone import TlsPhone
from tests.e2e.tls_gateway import AnsweringPhone, gateway_call

pytestmark = pytest.mark.e2e


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """A new, empty redis-server on our port (nothing saved to disk)."""
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        command = [need("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.process = process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert process.stdout is not None
        seen = b""
        deadline = time.monotonic() + 10
        while b"Ready to accept connections" not in seen:  # its own word that it serves
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            chunk = os.read(process.stdout.fileno(), 4096) if ready else b""
            assert chunk, f"redis-server did not start: {seen.decode(errors='replace')}"
            seen += chunk
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep it drained

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [need("redis-cli"), "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.strip()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    store = Redis(tmp_path / "redis")
    store.start()
    yield store
    store.stop()


def phones_config(redis: Redis) -> str:
    return (
        peer("phone1", kind="softphone", addresses=[], numbers=["7001"], health_check=None)
        + peer("phone2", kind="softphone", addresses=[], numbers=["7002"], health_check=None)
        + dial_plan("phones", "sip-secured", ["phone1", "phone2"], numbers=["70xx"])
        + table("cluster", {"store": redis.url})
    )


def instance(start_server: StartServer, redis: Redis, admin: int | None = None) -> RunningServer:
    extra = table("admin", {"address": f"127.0.0.1:{admin}"}) if admin else ""
    server = start_server(extra_config=phones_config(redis) + extra)
    server.wait_for("cluster_bindings_published")
    return server


def metrics(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
        text = page.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sipserver_cluster")
    }


def registered(server: RunningServer, pki: Pki, name: str, number: str) -> TlsPhone:
    phone = TlsPhone(pki, make_leaf(pki.ca, dns=[f"{name}.example.test"]), server.tls_port, name)
    assert phone.register(number).startswith(b"SIP/2.0 200 OK")
    server.wait_for("cluster_bindings_written", published=1, timeout=10)
    return phone


def test_calls_entering_either_instance_reach_a_phone_on_the_other(
    start_server: StartServer, redis: Redis, pki: Pki
) -> None:
    a, b = instance(start_server, redis), instance(start_server, redis)
    phone1 = AnsweringPhone(registered(a, pki, "phone1", "7001"))
    phone2 = AnsweringPhone(registered(b, pki, "phone2", "7002"))
    try:
        for entry, number in ((b, "7001"), (a, "7002"), (a, "7001"), (b, "7002")):
            result = gateway_call(pki, entry.tls_port, number)
            assert (result.final, result.bye) == ("SIP/2.0 200 OK", "SIP/2.0 200 OK"), number
    finally:
        phone1.close()
        phone2.close()
    assert (phone1.count("INVITE"), phone1.count("BYE")) == (2, 2)
    assert (phone2.count("INVITE"), phone2.count("BYE")) == (2, 2)
    handed = b.wait_for("call_routed", dial_plan="phones", target="sipserver-sibling")
    assert handed["status"] == 200
    relayed = a.wait_for("call_routed", peer="sipserver-sibling")
    assert relayed["target"] == "phone1"
    # The binding names the instance that holds the flow, with its expiry as the TTL.
    assert 0 < int(redis.cli("PTTL", "sipserver:reg:7001")) <= 300_000
    assert "phone1" in redis.cli("HGETALL", "sipserver:reg:7001")


def test_the_store_down_and_back_empty(start_server: StartServer, redis: Redis, pki: Pki) -> None:
    admin = free_port()
    a, b = instance(start_server, redis), instance(start_server, redis, admin)
    assert metrics(admin)["sipserver_cluster_store_up"] == 1
    phone = AnsweringPhone(registered(a, pki, "phone1", "7001"))
    try:
        redis.stop()
        # Entering the instance that holds the flow: the call goes on without the store.
        assert gateway_call(pki, a.tls_port, "7001").final == "SIP/2.0 200 OK"
        # Entering the other: not found, at once (the store's failure is bounded).
        refused = gateway_call(pki, b.tls_port, "7001", timeout=5)
        assert refused.final == "SIP/2.0 480 Temporarily Unavailable"
        down = b.wait_for("cluster_store_unavailable")
        assert down["store"] == redis.url
        seen = metrics(admin)
        assert seen["sipserver_cluster_store_up"] == 0
        assert seen['sipserver_cluster_lookups_total{result="failed"}'] >= 1
        redis.start()  # empty
        back = a.wait_for("cluster_bindings_published", bindings=1, timeout=15)
        assert back["store"] == redis.url
        a.wait_for("cluster_store_restored", timeout=15)
        b.wait_for("cluster_store_restored", timeout=15)
        seen = metrics(admin)
        assert seen["sipserver_cluster_store_up"] == 1
        assert seen["sipserver_cluster_republished_total"] >= 2  # at start, and once back
        result = gateway_call(pki, b.tls_port, "7001")
        assert (result.final, result.bye) == ("SIP/2.0 200 OK", "SIP/2.0 200 OK")
    finally:
        phone.close()
    assert phone.count("INVITE") == 2


def test_an_instance_that_dies_takes_its_phones_with_it(
    start_server: StartServer, redis: Redis, pki: Pki
) -> None:
    a, b = instance(start_server, redis), instance(start_server, redis)
    owner = a.wait_for("cluster_sharing_bindings")["owner"]
    phone = registered(a, pki, "phone1", "7001")
    try:
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        # At once (its flow is gone; the hop to it is refused), not after a 32 s timeout.
        result = gateway_call(pki, b.tls_port, "7001", timeout=5)
        assert result.final == "SIP/2.0 480 Temporarily Unavailable"
        # Its heartbeat key goes as its 4 s TTL would (nobody refreshes it: A is dead);
        # the next look-up drops A's bindings. The key lives 3-4 s after the kill, so on a
        # loaded machine the call above can outlast it: gone already (-2), or expiring.
        alive = f"sipserver:alive:{owner}"
        left_ms = int(redis.cli("PTTL", alive))
        assert left_ms == -2 or 0 < left_ms <= 4000
        redis.cli("DEL", alive)
        assert redis.cli("EXISTS", alive) == "0"
        assert gateway_call(pki, b.tls_port, "7001", timeout=5).final.startswith("SIP/2.0 480")
        dropped = b.wait_for("cluster_bindings_dropped")
        assert (dropped["number"], dropped["bindings"]) == ("7001", 1)
        assert redis.cli("HLEN", "sipserver:reg:7001") == "0"
    finally:
        phone.close()


def test_a_phone_that_moves_to_the_other_instance_is_reached_there_from_both(
    start_server: StartServer, redis: Redis, pki: Pki
) -> None:
    a, b = instance(start_server, redis), instance(start_server, redis)
    first = registered(a, pki, "phone1", "7001")
    first.close()  # the phone loses its connection to A and registers with B
    a.wait_for("registration_removed", number="7001")
    a.wait_for("cluster_bindings_written", withdrawn=1)
    phone = AnsweringPhone(registered(b, pki, "phone1", "7001"))
    try:
        for entry in (a, b, a):
            result = gateway_call(pki, entry.tls_port, "7001")
            assert (result.final, result.bye) == ("SIP/2.0 200 OK", "SIP/2.0 200 OK")
    finally:
        phone.close()
    assert phone.count("INVITE") == 3
    assert redis.cli("HLEN", "sipserver:reg:7001") == "1"  # A's binding was withdrawn


def test_a_peers_max_calls_holds_across_instances(
    start_server: StartServer, redis: Redis, tmp_path: Path
) -> None:
    """gw1 may have 4 calls in progress on the server as a whole: 3 ringing on one instance
    leave it 1 on the other, whose refusal counts all 4."""
    limited = table("cluster", {"store": redis.url}) + dial_plan(
        "echo", "unsecured", [], numbers=["5xxx"], action="answer", answer_after=3.0
    )
    a, b = (start_server(extra_config=limited) for _ in range(2))
    for server in (a, b):
        config = server.workdir / "sipserver.toml"
        config.write_text(
            config.read_text().replace('name = "gw1"\n', 'name = "gw1"\nmax_calls = 4\n', 1)
        )
        server.process.send_signal(signal.SIGHUP)
        server.wait_for("config_reloaded")
        server.wait_for("call_counts_shared")
    uac = call_uac(tmp_path / "uac.xml", shed_retry_after=30)
    ringing = subprocess.Popen(
        sipp_caller_command(uac, a.sip_port, "5000", calls=3, rate=100),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    b.wait_for("call_counts_elsewhere", active=3, by_peer={"gw1": 3})
    second = subprocess.run(
        sipp_caller_command(uac, b.sip_port, "5000", calls=2, rate=100),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:]
    out, _ = ringing.communicate(timeout=60)
    assert ringing.returncode == 0, out[-3000:]
    (refused,) = b.wait_count("call_limit_reached", 1)
    assert refused["reason"] == "Peer gw1 has 4 calls in progress, its max_calls (4)"
    assert len(b.wait_count("call_answered", 1)) == 1
    assert len(a.wait_count("call_answered", 3)) == 3 and a.events("call_limit_reached") == []
    assert redis.cli("HLEN", "sipserver:calls") == "2"  # each instance publishes its own
    b.wait_for("call_counts_elsewhere", active=0)  # and learn the calls have ended
