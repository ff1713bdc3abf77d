"""The supervisor's pure parts: how many workers, how their metrics add up, and the
`workers` key's checks."""

from __future__ import annotations

import os

import pytest

from sipserver.config import ConfigError, parse_config
from sipserver.server.workers import merge_metrics, worker_count

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
