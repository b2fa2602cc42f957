"""The PNG of an `anju fleet` run: every alarm's and heartbeat's latency against the time it
happened, on a log scale, with the storm, the centre worker's loss and the power cut marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKS = {"storm": "alarm storm", "centre_killed": "centre worker killed", "cut": "power cut", "line_back": "line back"}


def plot(
    path: Path,
    alarms: dict[str, list[tuple[float, float]]],
    heartbeats: list[tuple[float, float]],
    marks: dict[str, float],
    summary: dict[str, Any],
) -> None:
    """`alarms` by label and `heartbeats`: (seconds since the fleet started, latency ms)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5), dpi=110)
    if heartbeats:
        xs, ys = zip(*heartbeats, strict=True)
        axes.scatter(xs, ys, s=2, alpha=0.25, color="tab:gray", label=f"heartbeat, sent → stored ({len(xs)})")
    colours = iter(["tab:red", "tab:blue", "tab:green", "tab:orange"])
    for label, points in alarms.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.scatter(xs, ys, s=6, color=next(colours), label=f"alarm ({label}), raised → acked ({len(xs)})")
    start = marks["start"]
    for n, (key, text) in enumerate((k, t) for k, t in MARKS.items() if k in marks):
        axes.axvline(marks[key] - start, color="black", linestyle=":", linewidth=1)
        height = 1.01 + 0.04 * (n % 2)  # marks close together (the cut, the line back) do not overlap
        axes.text(marks[key] - start, height, text, fontsize=8, transform=axes.get_xaxis_transform())
    axes.set_yscale("log")
    axes.set_xlabel("seconds since the fleet started")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_title(
        f"anju fleet: {summary['hubs']} hubs, heartbeat every {summary['options']['heartbeat_s']:g} s, "
        f"{summary['options']['centre_workers']} centre worker(s), {summary['db']}",
        fontsize=10,
        pad=24,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", fontsize=8, markerscale=3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
