#!/usr/bin/env python3
"""Draw docs/benchmarks.md's figures from the JSON that `call_rate.py --json` writes.

    pip install '.[bench]'     # matplotlib: for the plots only
    python bench/plot.py bench/results/*.json --out docs/img

Writes cpu_per_call.png (the proxy's CPU ms per call against the offered rate) and
setup_p99.png (the 99th percentile of INVITE -> 200 against the offered rate), one line per
proxy, transport and worker count. A hollow marker is a step that was not clean (a call
failed or was shed, the achieved rate fell short, or p99 passed the limit)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def series(steps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Steps by line (proxy, transport, workers), each line's steps by rate."""
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for step in steps:
        workers = f", {step['workers']} workers" if step.get("workers", 1) > 1 else ""
        lines[f"{step['proxy']} {step['transport']}{workers}"].append(step)
    return {name: sorted(line, key=lambda s: s["rate"]) for name, line in sorted(lines.items())}


def draw(lines: dict[str, list[dict[str, Any]]], key: str, label: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for name, line in lines.items():
        rates = [s["rate"] for s in line]
        values = [s[key] for s in line]
        (drawn,) = axes.plot(rates, values, label=name, linewidth=1.5)
        for step in line:
            axes.plot(
                step["rate"],
                step[key],
                "o",
                color=drawn.get_color(),
                markerfacecolor=drawn.get_color() if step["clean"] else "white",
            )
    axes.set_xlabel("calls offered per second")
    axes.set_ylabel(label)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    commits = sorted({s["commit"] for line in lines.values() for s in line})
    dates = sorted({s["date"] for line in lines.values() for s in line})
    axes.set_title(f"{label} ({', '.join(dates)}; {', '.join(commits)})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files of call_rate.py --json")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    steps = [step for path in args.results for step in json.loads(path.read_text())]
    lines = series(steps)
    args.out.mkdir(parents=True, exist_ok=True)
    draw(lines, "cpu_ms_per_call", "CPU ms per call", args.out / "cpu_per_call.png")
    draw(lines, "p99", "setup p99 (ms)", args.out / "setup_p99.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
