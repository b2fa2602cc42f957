"""The `anju fleet` sub-command: its arguments, its progress on the terminal, its report.

`--json` prints the summary (docs/fleet-json.md); otherwise a short table. Exit status 0 when no
alarm was lost or doubled, 1 when one was, 2 when the fleet could not be run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="many simulated households against one broker and the centre, measured",
        description="Starts a private mosquitto, --centre-workers reference centres sharing the load "
        "(MQTT 5 shared subscription, one store) and --hubs simulated hubs in --processes processes, each "
        "running Anju's real cloud_bridge (outbox, MQTT uplink, acks, heartbeats, last will). Optionally an "
        "alarm storm (--storm K: K alarms within one second) and a district power cut (--reconnect-storm). "
        "Reports alarm and heartbeat latency, alarms lost or doubled, how the centre workers shared the work, "
        "and CPU and memory of the broker and the centre.",
        epilog="examples:\n"
        "  anju fleet --hubs 200 --duration 30 --storm 50 --reconnect-storm\n"
        "  anju fleet --hubs 10000 --duration 180 --storm 1000 --reconnect-storm --plot docs/fleet-latency.png\n"
        "  anju fleet --hubs 500 --duration 40 --storm 300 --centre-workers 3 --kill-centre-worker\n"
        "  anju fleet --hubs 1000 --duration 60 --db postgresql://postgres@127.0.0.1/anju_centre\n"
        "A machine needs about 150 MB per 1,000 hubs, and `ulimit -n` above --hubs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet.add_argument("--hubs", type=int, default=100, help="simulated households (default: %(default)s)")
    fleet.add_argument(
        "--duration", type=float, default=60.0, help="seconds to run once every hub is up (default: %(default)s)"
    )
    fleet.add_argument("--storm", type=int, default=0, metavar="K", help="K alarms within one second, at 30%% in")
    fleet.add_argument(
        "--reconnect-storm", action="store_true", help="a district power cut at 60%% in: every connection reset"
    )
    fleet.add_argument("--heartbeat-s", type=float, default=60.0, help="each hub's heartbeat (default: %(default)s)")
    fleet.add_argument("--ramp-s", type=float, help="bring the hubs up over this long (default: one heartbeat, ≤ 60)")
    fleet.add_argument("--processes", type=int, default=4, help="hub processes (default: %(default)s)")
    fleet.add_argument("--centre-workers", type=int, default=2, help="centre processes (default: %(default)s)")
    fleet.add_argument(
        "--db", help="the centre's store, empty: a SQLite file, or postgresql://… (default: SQLite in workdir)"
    )
    fleet.add_argument(
        "--kill-centre-worker", action="store_true", help="SIGKILL one centre worker in the middle of the storm"
    )
    fleet.add_argument("--plot", type=Path, help="write a PNG of latency over time here")
    fleet.add_argument("--workdir", type=Path, help="keep the logs and the centre's database here")
    fleet.add_argument("--json", action="store_true", help="print the summary as JSON (docs/fleet-json.md)")


def main(args: argparse.Namespace) -> int:
    import resource

    from simulator.fleet import FleetOptions

    if args.hubs < 1 or args.duration <= 0 or args.processes < 1 or args.centre_workers < 1:
        print("anju fleet: --hubs, --duration, --processes and --centre-workers must be positive", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The broker holds a socket per hub; each hub process a proxied pair per hub of its share.
    wanted = max(args.hubs, 2 * -(-args.hubs // args.processes)) + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            print(f"anju fleet: {args.hubs} hubs need `ulimit -n {wanted}`; this shell allows {hard}", file=sys.stderr)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the broker and workers
    options = FleetOptions(
        hubs=args.hubs,
        duration_s=args.duration,
        storm=args.storm,
        reconnect_storm=args.reconnect_storm,
        heartbeat_s=args.heartbeat_s,
        ramp_s=args.ramp_s,
        processes=args.processes,
        centre_workers=args.centre_workers,
        db=args.db,
        kill_centre_worker=args.kill_centre_worker,
        plot=args.plot,
    )
    try:
        summary = asyncio.run(_run_with_progress(options, args.workdir, quiet=args.json))
    except RuntimeError as exc:
        print(f"anju fleet: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0 if summary["lost"] == 0 and summary["doubled"] == 0 else 1


async def _run_with_progress(options: Any, workdir: Path | None, quiet: bool) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from simulator.fleet import run_fleet

    console = Console(stderr=True)
    with Live(Text("starting the broker and the centre…"), console=console, transient=True) as live:
        return await run_fleet(options, workdir, say=lambda line: live.update(Text(line)))


def format_summary(s: dict[str, Any]) -> str:
    def ms(figures: dict[str, Any]) -> str:
        if figures.get("p50") is None:
            return "none"
        return f"p50 {figures['p50']:.0f} ms · p99 {figures['p99']:.0f} ms · max {figures['max']:.0f} ms"

    lines = [f"{s['hubs']} hubs up in {s['connect_s']} s; centre store: {s['db']}"]
    for label, figures in s["alarms"]["latency_ms"].items():
        lines.append(f"  alarms ({label}, {figures['n']}): raised → acked {ms(figures)}")
    centre = s["alarms"].get("centre_ms") or {}
    if centre.get("p50") is not None:
        lines.append(f"    of which the centre's part (read off the broker -> committed): {ms(centre)}")
    hb = s["heartbeats"]
    lines.append(f"  heartbeats ({hb['stored']} stored): sent → stored {ms(hb['latency_ms'])}")
    lines.append(f"  lost: {s['lost']} · doubled: {s['doubled']} · repeated acks: {s['repeated_acks']}")
    shares = ", ".join(f"{k} {v}" for k, v in s["records_by_centre_worker"].items())
    killed = f" ({s['centre_worker_killed']} killed mid-storm)" if s["centre_worker_killed"] else ""
    lines.append(f"  alarm records by centre worker: {shares}{killed}")
    if s["reconnect_settle_s"] is not None or s["options"]["reconnect_storm"]:
        lines.append(f"  power cut: every hub back and every alarm acked {s['reconnect_settle_s']} s after the cut")
    lines.append(
        f"  centre's own alarms: hub.offline {s['centre_alarms']['hub.offline']}, "
        f"hub.online {s['centre_alarms']['hub.online']}"
    )
    for p in s["processes"]:
        cpu = f"{p['cpu_pct']} % CPU" if p.get("cpu_pct") is not None else ""
        rss = f"{p['peak_rss_mb']} MB peak" if p.get("peak_rss_mb") is not None else ""
        lines.append(f"  {p['process']}: {', '.join(x for x in (cpu, rss) if x)}")
    if s.get("plot"):
        lines.append(f"  plot: {s['plot']}")
    return "\n".join(lines)
