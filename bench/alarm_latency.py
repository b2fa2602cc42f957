"""Pull-cord alarms through the whole path: simulated pin -> hub -> real mosquitto -> centre -> ack.

Plays a generated scenario (the same runner as `anju simulate`: separate hub and centre
processes, a private mosquitto) with N pulls spread over several cords, then prints p50/p99/max
of `local_alert_ms` (stimulus -> siren output on) and `ack_ms` (stimulus -> the centre's ack
journaled on the hub), and the hub's peak RSS. `--record` writes them into docs/BENCHMARKS.md.

    python bench/alarm_latency.py [--alarms 200] [--interval 0.1] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import latency_table, machine, record

from simulator.runner import run_scenario
from simulator.scenario import Scenario

TARGETS = {"local_alert_ms": 20.0, "ack_ms": 100.0, "rss_mb": 120.0}
CORD_PINS = (5, 6, 13, 19, 26)


def scenario(alarms: int, interval: float) -> Scenario:
    devices = [
        {"id": f"cord-{i}", "kind": "pullcord", "transport": "gpio", "pin": pin} for i, pin in enumerate(CORD_PINS)
    ]
    steps = [
        {"at": 0.5 + i * interval, "device": f"cord-{i % len(CORD_PINS)}", "do": "pull", "hold": 0.05}
        for i in range(alarms)
    ]
    return Scenario.model_validate(
        {
            "name": f"bench-{alarms}-pulls",
            "household": {"id": "hh-bench", "county": "bench"},
            "devices": devices,
            "steps": steps,
            "expect": [{"event": "alarm.emergency", "count": alarms, "delivered": True}],
            "settle": 60,
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alarms", type=int, default=200, help="pull-cord alarms to send (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between pulls (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()

    print(
        f"{args.alarms} pull-cord alarms, one every {args.interval} s, through hub, mosquitto and centre ...",
        flush=True,
    )
    result = asyncio.run(run_scenario(scenario(args.alarms, args.interval)))
    events = [e for e in result["events"] if e["type"] == "alarm.emergency"]
    local = [e["local_alert_ms"] for e in events if e["local_alert_ms"] is not None]
    acks = [e["ack_ms"] for e in events if e["ack_ms"] is not None]
    lost = args.alarms - sum(1 for e in events if e["delivered"])
    doubled = sum(1 for e in events if e["centre_records"] > 1)
    rss = result["hub_peak_rss_mb"]
    if not local or not acks:
        print("no measurements: the run failed", result["expectations"], file=sys.stderr)
        return 1

    table = latency_table(
        [
            ("local alert (pin low -> siren output on)", local, TARGETS["local_alert_ms"]),
            ("centre ack (pin low -> ack journaled on the hub)", acks, TARGETS["ack_ms"]),
        ]
    )
    rss_line = (
        f"Hub peak RSS: {rss:.1f} MB (target <= {TARGETS['rss_mb']:g} MB: "
        f"{'meets' if rss is not None and rss <= TARGETS['rss_mb'] else 'MISSES'}). "
        f"Alarms lost: {lost}; recorded twice at the centre: {doubled}."
    )
    command = f"`python bench/alarm_latency.py --alarms {args.alarms} --interval {args.interval}`"
    body = f"{command}\n\n{table}\n\n{rss_line}\n"
    print(f"\nMachine: {machine()}\n\n{table}\n\n{rss_line}")
    if args.record:
        record("Alarm latency (bench/alarm_latency.py)", body)
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0 if result["ok"] and lost == 0 and doubled == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
