"""The systemd unit says what the README promises."""

from __future__ import annotations

import configparser
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "sipserver.service"


def test_systemd_unit_runs_unprivileged_with_reload_and_drain() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    service = parser["Service"]
    assert (
        service["User"] == "sipserver" and service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    )
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    assert (
        service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) > 30
    )  # > shutdown_grace
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"


def test_the_compose_example_configuration_is_valid() -> None:
    from sipserver.config.loader import load_config

    config = load_config(UNIT.parent / "container" / "example-conf" / "sipserver.toml")
    assert [p.name for p in config.peers][:2] == ["gw1", "pbx1"]
    assert config.peers[0].kind == "gateway"
    compose = (UNIT.parents[1] / "compose.yaml").read_text()
    assert "./contrib/container/example-conf:/etc/sipserver:ro" in compose
