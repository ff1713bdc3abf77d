"""The container image, built and run for real with podman: OPTIONS over UDP and TCP
(sipsak) and mutual TLS (sipserver ping) answered from inside, the HEALTHCHECK healthy,
and `podman stop` prompt and clean. The base image (a local python:3.11-slim stand-in built
with debootstrap) is built once and kept between runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, free_port, need

pytestmark = pytest.mark.e2e
CONTAINER_TOOLS = REPO / "contrib" / "container"


def podman_env() -> dict[str, str]:
    work = Path(os.environ.get("PODMAN_WORK", "/tmp/podman-work"))
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["bash", "-c", f". {CONTAINER_TOOLS / 'env.sh'}"],
        check=True,
        env={**os.environ, "PODMAN_WORK": str(work)},
    )
    return {
        **os.environ,
        "PODMAN_WORK": str(work),
        "CONTAINERS_CONF": str(work / "containers.conf"),
        "DISABLE_HC_SYSTEMD": "true",
    }


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env()
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    if shutil.which("podman") is None:
        message = (
            "PODMAN IS NOT INSTALLED: the container test is SKIPPED. Run the README's test command "
            "(it installs podman, runc and debootstrap) to build and test the image."
        )
        warnings.warn(message, stacklevel=1)
        print(f"\n*** {message} ***\n", file=sys.stderr)
        pytest.skip(message)
    base = subprocess.run(
        ["bash", str(CONTAINER_TOOLS / "make-base.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env=podman_env(),
    )
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    tag = f"localhost/sipserver:test-{uuid.uuid4().hex[:8]}"
    podman("build", "--pull=never", "--network", "host", "--format", "docker", "-t", tag, str(REPO))
    yield tag
    podman("rmi", "-f", tag, check=False)


def test_the_image_serves_sip_is_healthy_and_stops_cleanly(image: str, tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipserver",
            "certs",
            "lab-pki",
            "--out",
            str(lab),
            "--server",
            "sip.example.test",
            "--peer",
            "gw1.example.test",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert made.returncode == 0, made.stderr
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "sipserver.toml").write_text(
        '[server]\nfqdn = "sip.example.test"\naddresses = ["127.0.0.1"]\n'
        '[tls]\ncertificate_dir = "/var/lib/sipserver/certs/server"\ntrust_dir = "/var/lib/sipserver/certs/trust"\n'
        '[[peer]]\nname = "gw1"\nfqdn = "gw1.example.test"\naddresses = ["127.0.0.1"]\n'
        '[[peer]]\nname = "local"\nfqdn = "localhost"\naddresses = ["127.0.0.0/8"]\n'
    )
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the image runs as an unprivileged user
    sip_port, tls_port = free_port(), free_port()
    name = f"sipserver-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run",
        "-d",
        "--name",
        name,
        "--init",
        "--network",
        "host",
        "-e",
        f"SIP_PORT={sip_port}",
        "-e",
        f"TLS_PORT={tls_port}",
        "-v",
        f"{conf}:/etc/sipserver:ro",
        "-v",
        f"{lab / 'sipserver'}:/var/lib/sipserver/certs:ro",
        image,
    )
    try:
        # Follow the container's log and wait (bounded) for the server's ready line.
        follower = subprocess.Popen(
            ["podman", "logs", "-f", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=podman_env(),
        )
        ready = threading.Event()

        def follow() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                if event_of(line) == "server_ready":
                    ready.set()

        threading.Thread(target=follow, daemon=True).start()
        try:
            assert ready.wait(30), podman("logs", name).stdout[-3000:]
        finally:
            follower.kill()
            follower.wait(10)
        for transport in ("udp", "tcp"):
            sipsak = subprocess.run(
                [need("sipsak"), "-vv", "-s", f"sip:127.0.0.1:{sip_port}", "-E", transport],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "SIP/2.0 200 OK" in sipsak.stdout, sipsak.stdout
        ping = subprocess.run(
            [
                sys.executable,
                "-m",
                "sipserver",
                "ping",
                f"sip:127.0.0.1:{tls_port}",
                "--tls",
                "--cert",
                str(lab / "peers" / "gw1.example.test" / "gw1.example.test.pem"),
                "--ca",
                str(lab / "ca" / "ca.crt"),
                "--server-name",
                "sip.example.test",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert ping.returncode == 0 and " 200 OK " in ping.stdout, ping.stdout + ping.stderr
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        started = time.monotonic()
        podman("stop", "-t", "10", name)
        assert time.monotonic() - started < 5
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        logs = podman("logs", name).stdout
        events = {event_of(line) for line in logs.splitlines()}
        assert {"server_drained", "tls_peer_accepted"} <= events
    finally:
        podman("rm", "-f", name, check=False)


def event_of(line: str) -> str | None:
    """The event name of one JSON log line (None for anything else podman prints)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("event") if isinstance(record, dict) else None
