"""The supervisor's pure parts: how many workers, how their metrics add up, and the
`workers` key's checks."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipserver.config.loader import ConfigError, parse_config
from sipserver.server.workers import Supervisor, merge_metrics, worker_count

WORKER_0 = """# HELP sipserver_calls_total Calls
# TYPE sipserver_calls_total counter
sipserver_calls_total{outcome="answered"} 3.0
# HELP sipserver_connections_open Open connections
# TYPE sipserver_connections_open gauge
sipserver_connections_open{transport="tls"} 2.0
# HELP sipserver_overloaded Overloaded
# TYPE sipserver_overloaded gauge
sipserver_overloaded 0.0
# HELP sipserver_target_up Target up
# TYPE sipserver_target_up gauge
sipserver_target_up{target="pbx1"} 1.0
"""
WORKER_1 = (
    WORKER_0.replace("} 3.0", "} 4.0")
    .replace('"tls"} 2.0', '"tls"} 5.0')
    .replace("overloaded 0.0", "overloaded 1.0")
    .replace('"pbx1"} 1.0', '"pbx1"} 0.0')
)


def values(text_a: str, text_b: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in merge_metrics([text_a, text_b])
        for sample in family.samples
    }


def test_counters_and_connection_gauges_add_up_the_rest_is_the_worst_worker() -> None:
    merged = values(WORKER_0, WORKER_1)
    assert merged[("sipserver_calls_total", (("outcome", "answered"),))] == 7.0
    assert merged[("sipserver_connections_open", (("transport", "tls"),))] == 7.0
    assert merged[("sipserver_overloaded", ())] == 1.0  # one worker shedding: say so
    assert merged[("sipserver_target_up", (("target", "pbx1"),))] == 0.0  # one saw it down


def test_worker_count() -> None:
    assert worker_count(3) == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("value", "accepted"), [("2", True), ('"auto"', True), ("0", False), ('"many"', False)]
)
def test_the_workers_key(value: str, accepted: bool) -> None:
    text = f'[server]\nfqdn = "sip.example.test"\nworkers = {value}\n'
    if accepted:
        assert parse_config(text).server.workers in (2, "auto")
    else:
        with pytest.raises(ConfigError, match=r"server\.workers"):
            parse_config(text)


HISTOGRAM = """# HELP sipserver_setup_seconds Setup
# TYPE sipserver_setup_seconds histogram
sipserver_setup_seconds_bucket{le="0.1"} 2.0
sipserver_setup_seconds_bucket{le="+Inf"} 3.0
sipserver_setup_seconds_count 3.0
sipserver_setup_seconds_sum 0.5
"""


def test_histograms_add_up_over_workers() -> None:
    merged = values(HISTOGRAM, HISTOGRAM)
    assert merged[("sipserver_setup_seconds_bucket", (("le", "+Inf"),))] == 6.0
    assert merged[("sipserver_setup_seconds_count", ())] == 6.0


def supervisor(count: int = 2) -> Supervisor:
    return Supervisor(parse_config('[server]\nfqdn = "sip.example.test"\n'), [], count)


def test_an_ended_workers_counters_stay_in_the_sums_and_its_gauges_go() -> None:
    boss = supervisor()
    boss._last_metrics[1] = list(text_string_to_metric_families(WORKER_1 + HISTOGRAM))
    boss._retire(1)
    kept = {f.name: f for f in boss._retired}
    assert set(kept) == {"sipserver_calls", "sipserver_setup_seconds"}
    # A second death of the same slot adds to what the first left.
    boss._last_metrics[1] = list(text_string_to_metric_families(WORKER_1))
    boss._retire(1)
    (calls,) = [f for f in boss._retired if f.name == "sipserver_calls"]
    assert [s.value for s in calls.samples] == [8.0]
    assert boss._last_metrics[1] is None


async def test_healthz_names_the_worker_that_is_down() -> None:
    boss = supervisor()
    boss.down[1] = "exited (signal SIGKILL); being replaced"
    boss.restarts[1] = 1
    status, _, body = await boss._page(b"/healthz")
    health = json.loads(body)
    assert status == 503 and health["workers_down"] == [1]
    assert "worker 1: exited (signal SIGKILL); being replaced" in health["problems"]
    assert health["per_worker"][1]["status"] == "down"
    assert [w["restarts"] for w in health["per_worker"]] == [0, 1]
