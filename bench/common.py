"""Shared by the benchmark scripts: percentiles, a description of the machine, and writing a
script's latest results into its own section of docs/BENCHMARKS.md.

When ANJU_BENCH_RESULTS names a directory (bench/run_all.py sets it), `record` also leaves the
section there as `<section slug>.json`: {"section", "body", "summary"}, `summary` being the rows the
script gives for the summary table (measure, figure, target, meets) or null, in which case
bench/run_all.py takes every table row of the body whose last cell says "meets" or "MISSES".
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from simulator.stats import percentile

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
RESULTS_ENV = "ANJU_BENCH_RESULTS"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=5).stdout
        broker = mosquitto.splitlines()[0].strip() if mosquitto else "mosquitto ?"
    except (OSError, subprocess.SubprocessError):
        broker = "mosquitto not found"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {broker}"
    )


def summary_row(measure: str, figure: str, target: str = "", meets: bool | None = None) -> dict[str, object]:
    """One row of the summary table at the top of docs/BENCHMARKS.md (meets: None when no target)."""
    return {"measure": measure, "figure": figure, "target": target, "meets": meets}


def record(section: str, body: str, summary: list[dict[str, object]] | None = None) -> None:
    """Replace (or append) the section `## {section}` of docs/BENCHMARKS.md with `body`; with
    ANJU_BENCH_RESULTS set, also leave it (and `summary`, rows made by summary_row) there as JSON."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"## {section}\n\n_Last run {stamp} on {machine()}._\n\n{body.strip()}\n"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.M | re.S)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS.write_text(text)
    results = os.environ.get(RESULTS_ENV)
    if results:
        slug = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
        Path(results).mkdir(parents=True, exist_ok=True)
        payload = {"section": section, "body": body.strip(), "summary": summary}
        (Path(results) / f"{slug}.json").write_text(json.dumps(payload, ensure_ascii=False, indent=1))


def latency_table(rows: list[tuple[str, list[float], float]]) -> str:
    """A markdown table of latencies in ms, one row per (measure, values, p99 target)."""
    lines = ["| measure | n | p50 ms | p99 ms | max ms | target |", "|---|---|---|---|---|---|"]
    for name, values, target in rows:
        p99 = percentile(values, 99)
        verdict = "meets" if p99 <= target else "MISSES"
        lines.append(
            f"| {name} | {len(values)} | {percentile(values, 50):.2f} | {p99:.2f} | {max(values):.2f} "
            f"| p99 <= {target:g} ms: {verdict} |"
        )
    return "\n".join(lines)
