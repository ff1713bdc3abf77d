#!/usr/bin/env python3
"""What the log costs per call: the events one proxied call gives (from the core, as in
core_calls.py) logged through the daemon's own configuration (JSON lines, here to
/dev/null) with a mutual-TLS connection's context bound, as the server logs them. Prints
µs of CPU per call for logging, to set against the server's CPU per call (call_rate.py).

    python bench/log_cost.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from core_calls import CONFIG, one_call  # noqa: E402

from sipserver.config.loader import parse_config  # noqa: E402
from sipserver.log import bind_connection, configure_logging  # noqa: E402
from sipserver.proxy.core import SipCore  # noqa: E402
from sipserver.server.event_log import log_event  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    core = SipCore(parse_config(CONFIG))
    calls = [one_call(core, n, n / 1000) for n in range(args.calls)]
    lines = sum(1 for events in calls for e in events if e.log_level != "debug")
    with open("/dev/null", "w") as sink:
        configure_logging("info", "json", stream=sink)
        bind_connection(
            transport="tls",
            remote="127.0.0.1:40000",
            connection_id=1,
            peer="gw1",
            peer_cert_thumbprint_sha256="ab" * 32,
            peer_cert_issuer="CN=Example CA",
            peer_cert_serial="0x1234",
        )
        rounds = []
        per_round = max(1, args.calls // 5)
        for first in range(0, 5 * per_round, per_round):
            started = time.process_time()
            for events in calls[first : first + per_round]:
                for event in events:
                    log_event(event)
            rounds.append((time.process_time() - started) * 1e6 / per_round)
    print(
        f"{5 * per_round} calls' events logged ({lines / args.calls:.1f} lines per call): "
        f"{min(rounds):.1f} µs CPU per call at best (median {sorted(rounds)[2]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
