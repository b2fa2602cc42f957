"""The county at scale (issue [8]): `anju fleet` runs, measured against the targets.

Runs, each in its own private mosquitto and centre (simulator/fleet.py):
  target       10,000 hubs, 60 s heartbeats, a storm of 1,000 alarms within one second, then a
               district power cut (every connection reset at once); 2 centre workers, SQLite.
  postgresql   the same on PostgreSQL (a throw-away database on the local server).
  worker-loss  2,000 hubs, 3 centre workers on PostgreSQL, one SIGKILLed in the middle of a storm
               of 500: the shared subscription balancing the load and nothing lost.
Prints each summary; `--record` writes them into docs/BENCHMARKS.md and the target run's plot to
docs/fleet-latency.png.

    python bench/fleet.py [--runs target postgresql worker-loss] [--hubs 10000] [--duration 180] [--record]

Targets (this 2-core machine): every alarm acknowledged, alarm ack p99 <= 2 s during the storm,
nothing lost or doubled; after the power cut, every hub back and every alarm acked within 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, summary_row

from simulator.fleet import FleetOptions, run_fleet
from simulator.fleet_cli import format_summary
from simulator.postgres import throwaway_database

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLOT = DOCS / "fleet-latency.png"
STORM_P99_MS, SETTLE_S = 2000.0, 60.0


def options(run: str, hubs: int, duration: float, db: str | None, plot: Path | None) -> FleetOptions:
    if run == "worker-loss":
        return FleetOptions(
            hubs=min(hubs, 2000), duration_s=min(duration, 60), storm=500, centre_workers=3,
            kill_centre_worker=True, db=db, ramp_s=20,
        )  # fmt: skip
    return FleetOptions(
        hubs=hubs, duration_s=duration, storm=1000, reconnect_storm=True, centre_workers=2, db=db, plot=plot
    )


async def play(run: str, hubs: int, duration: float, plot: Path | None) -> dict[str, Any]:
    if run == "target":
        return await run_fleet(options(run, hubs, duration, None, plot), say=_progress)
    with throwaway_database() as url:
        return await run_fleet(options(run, hubs, duration, url, None), say=_progress)


_last_progress = [0.0]


def _progress(line: str) -> None:
    """On a terminal, one line rewritten in place; in a log, a line every 10 s."""
    if sys.stderr.isatty():
        print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
    elif time.monotonic() - _last_progress[0] >= 10:
        _last_progress[0] = time.monotonic()
        print(line, file=sys.stderr, flush=True)


def table(run: str, s: dict[str, Any]) -> tuple[str, list[dict[str, object]]]:
    storm = s["alarms"]["latency_ms"].get("storm", {})
    reconnect = s["alarms"]["latency_ms"].get("reconnect")
    hb = s["heartbeats"]["latency_ms"]
    raised = s["alarms"]["raised"]
    acked_all = s["lost"] == 0
    none_lost_or_doubled = acked_all and s["doubled"] == 0
    centre = s["alarms"].get("centre_ms", {})
    # The 2 s target is for a storm the centre takes whole; a worker killed mid-storm costs the
    # alarms it held one resend (3 s), which is the point of that run.
    judged = not s["centre_worker_killed"]
    storm_verdict = f"p99 <= 2 s | {_meets(storm.get('p99'), STORM_P99_MS)}" if judged else "(a resend: 1.5-3 s) |"
    rows = [
        f"| alarms acknowledged | {raised - s['lost']} of {raised} | all | {'meets' if acked_all else 'MISSES'} |",
        f"| storm alarm ack p50 / p99 / max | {storm.get('p50')} / {storm.get('p99')} / {storm.get('max')} ms "
        f"({storm.get('n')} alarms) | {storm_verdict} |",
        f"| of which the centre's part (read off the broker -> committed) p50 / p99 / max | "
        f"{centre.get('p50')} / {centre.get('p99')} / {centre.get('max')} ms | | |",
        f"| lost / doubled | {s['lost']} / {s['doubled']} | 0 / 0 | {'meets' if none_lost_or_doubled else 'MISSES'} |",
        f"| heartbeat sent → stored p50 / p99 / max | {hb['p50']} / {hb['p99']} / {hb['max']} ms "
        f"({s['heartbeats']['stored']}) | | |",
    ]
    if reconnect:
        rows.append(
            f"| power cut: every hub back, every alarm acked | {s['reconnect_settle_s']} s | <= 60 s | "
            f"{_meets(s['reconnect_settle_s'], SETTLE_S)} |"
        )
        rows.append(
            f"| alarms raised as the line returned: ack p50 / p99 / max | {reconnect['p50']} / {reconnect['p99']} /"
            f" {reconnect['max']} ms ({reconnect['n']}) | | |"
        )
    shares = ", ".join(f"{k} {v}" for k, v in s["records_by_centre_worker"].items())
    killed = f"; {s['centre_worker_killed']} SIGKILLed mid-storm" if s["centre_worker_killed"] else ""
    rows.append(f"| alarm records by centre worker | {shares}{killed} | | |")
    offline = s["centre_alarms"]
    rows.append(
        f"| centre's own hub.offline / hub.online alarms | {offline['hub.offline']} / {offline['hub.online']} | | |"
    )
    for p in s["processes"]:
        cpu = "" if p.get("cpu_pct") is None else f"{p['cpu_pct']} % of a core"
        rss = "" if p.get("peak_rss_mb") is None else f"{p['peak_rss_mb']} MB peak RSS"
        rows.append(f"| {p['process']} | {', '.join(x for x in (cpu, rss) if x)} | | |")
    o = s["options"]
    command = (
        f"`anju fleet --hubs {o['hubs']} --duration {o['duration_s']:g} --storm {o['storm']}"
        f"{' --reconnect-storm' if o['reconnect_storm'] else ''} --centre-workers {o['centre_workers']}"
        f"{' --kill-centre-worker' if o['kill_centre_worker'] else ''}"
        f"{' --db postgresql://…' if s['db'] == 'postgresql' else ''}`"
    )
    body = (
        f"### {run}: {s['hubs']} hubs, {s['db']}\n\n{command} (hubs up in {s['connect_s']} s)\n\n"
        "| measure | figure | target | |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    summary = [
        summary_row(
            f"fleet {run}: alarms lost / doubled", f"{s['lost']} / {s['doubled']}", "0 / 0", none_lost_or_doubled
        ),
    ]
    if judged:
        summary.append(
            summary_row(
                f"fleet {run}: storm alarm ack p99 ({s['hubs']} hubs)",
                f"{storm.get('p99')} ms",
                "<= 2 s",
                storm.get("p99") is not None and storm["p99"] <= STORM_P99_MS,
            )
        )
    if reconnect:
        settle = s["reconnect_settle_s"]
        meets = settle is not None and settle <= SETTLE_S
        summary.append(summary_row(f"fleet {run}: power cut settles", f"{settle} s", "<= 60 s", meets))
    return body, summary


def _meets(value: float | None, limit: float) -> str:
    return "MISSES" if value is None or value > limit else "meets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["target", "postgresql", "worker-loss"])
    parser.add_argument("--hubs", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds after every hub is up")
    parser.add_argument("--record", action="store_true", help="write docs/BENCHMARKS.md and docs/fleet-latency.png")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bodies, summary = [], []
    ok = True
    for run in args.runs:
        print(f"fleet run '{run}' …", file=sys.stderr)
        result = asyncio.run(play(run, args.hubs, args.duration, PLOT if args.record and run == "target" else None))
        print(file=sys.stderr)
        print(f"{run}:\n{format_summary(result)}\n")
        body, rows = table(run, result)
        bodies.append(body)
        summary += rows
        ok = ok and all(row["meets"] is not False for row in rows)
    if args.record:
        plot = "\n![alarm and heartbeat latency, the target run](fleet-latency.png)\n" if "target" in args.runs else ""
        record(
            "Fleet (bench/fleet.py)",
            "`python bench/fleet.py` (see docs/SCALING.md for what the runs mean)\n\n" + "\n".join(bodies) + plot,
            summary,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
