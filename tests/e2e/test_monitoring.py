"""contrib/monitoring: the Prometheus alert rules pass Debian's `promtool check rules` and
their unit tests (`promtool test rules`: each alert fires on a fixture that should raise
it and stays quiet on one that should not), and every metric the rules and the Grafana
dashboard use is one a running server (two workers, so the supervisor's own metrics are
there too) exports."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from tests.configs import table
from tests.e2e.conftest import REPO, StartServer, free_port, need

pytestmark = pytest.mark.e2e
MONITORING = REPO / "contrib" / "monitoring"
METRIC = re.compile(r"\bsipserver_[a-z0-9_]+")


def test_the_alert_rules_pass_promtools_checks_and_unit_tests() -> None:
    promtool = need("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", "sipserver-alerts.yml"],
        cwd=MONITORING, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "sipserver-alerts.test.yml"],
        cwd=MONITORING, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a test of its own.
    rules = set(re.findall(r"- alert: (\w+)", (MONITORING / "sipserver-alerts.yml").read_text()))
    tests = (MONITORING / "sipserver-alerts.test.yml").read_text()
    assert rules == set(re.findall(r"alertname: (\w+)", tests))


def exported(text: str) -> set[str]:
    """Every sample name a scrape can have: each family, and a histogram's parts."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_every_metric_the_rules_and_the_dashboard_use_is_exported(
    start_server: StartServer,
) -> None:
    admin = free_port()
    server = start_server(
        server_extra="workers = 2", extra_config=table("admin", {"address": f"127.0.0.1:{admin}"})
    )
    server.wait_for("server_ready", timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as page:
        names = exported(page.read().decode())
    rules = (MONITORING / "sipserver-alerts.yml").read_text()
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set(METRIC.findall(rules)) | {m for e in expressions for m in METRIC.findall(e)}
    assert len(used) >= 15, used
    assert used <= names, sorted(used - names)
