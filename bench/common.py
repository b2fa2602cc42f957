"""Shared by the benchmark scripts: percentiles, a description of the machine, and writing a
script's latest results into its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


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


def record(section: str, body: str) -> None:
    """Replace (or append) the section `## {section}` of docs/BENCHMARKS.md with `body`."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"## {section}\n\n_Last run {stamp} on {machine()}._\n\n{body.strip()}\n"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.M | re.S)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS.write_text(text)
