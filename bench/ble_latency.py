"""BLE alarms through the whole path: a BTHome node's press -> fake bluetoothd -> hub -> mosquitto ->
centre -> ack.

Plays a generated scenario (the runner of `anju simulate`: the fake `org.bluez` on a private
D-Bus, the hub with bleak/BlueZ as a separate process, a private mosquitto and the centre) with N
presses spread over BLE pull-cord nodes and pendants. Each node runs the firmware's own node
logic (firmware/lib/node.py): a press is its burst of encrypted, trigger-based BTHome adverts. It
prints p50/p99/max of `local_alert_ms` (the node's press -> siren output on) and `ack_ms` (press
-> the centre's ack journaled on the hub). bench/ble_ingest.py measures the BLE stack alone under a
crowd of adverts; this is the alarm path end to end. `--record` writes into docs/BENCHMARKS.md.

    python bench/ble_latency.py [--alarms 100] [--interval 0.2] [--strangers 50] [--record]
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

TARGETS = {"local_alert_ms": 20.0, "ack_ms": 100.0}
KEY = "231d39c1d7cc1ab1aee224cd096db932"
NODES = (("pullcord", 3), ("pendant", 2))  # kind, how many


def scenario(alarms: int, interval: float, strangers: int) -> Scenario:
    devices = [
        {"id": f"{kind}-{i}", "kind": kind, "transport": "ble", "mac": f"A4:C1:38:B1:{k:02X}:{i:02X}", "key": KEY}
        for k, (kind, count) in enumerate(NODES)
        for i in range(count)
    ]
    steps = [
        {"at": 0.5 + i * interval, "device": devices[i % len(devices)]["id"], "do": "press"} for i in range(alarms)
    ]
    return Scenario.model_validate(
        {
            "name": f"bench-ble-{alarms}",
            "household": {"id": "hh-blebench", "county": "bench"},
            "devices": devices,
            "steps": steps,
            "expect": [{"event": "alarm.emergency", "count": alarms, "delivered": True}],
            "ble": {"passive": True, "heartbeat_s": 30, "strangers": strangers, "silence_restart_s": 60},
            "settle": 60,
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alarms", type=int, default=100, help="presses (default: %(default)s)")
    parser.add_argument(
        "--interval", type=float, default=0.2, help="seconds between presses, over 5 nodes (default: %(default)s)"
    )
    parser.add_argument(
        "--strangers", type=int, default=50, help="unknown BTHome devices advertising nearby (default: %(default)s)"
    )
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(
        f"{args.alarms} BLE presses (pull-cord nodes and pendants), {args.strangers} strangers nearby, through the"
        " fake bluetoothd, the hub, mosquitto and the centre ...",
        flush=True,
    )
    result = asyncio.run(run_scenario(scenario(args.alarms, args.interval, args.strangers)))
    events = [e for e in result["events"] if e["type"] == "alarm.emergency"]
    local = [e["local_alert_ms"] for e in events if e["local_alert_ms"] is not None]
    acks = [e["ack_ms"] for e in events if e["ack_ms"] is not None]
    lost = args.alarms - sum(1 for e in events if e["delivered"])
    if not local or not acks:
        print("no measurements: the run failed", result["expectations"], file=sys.stderr)
        return 1

    table = latency_table(
        [
            ("local alert (node press -> siren output on)", local, TARGETS["local_alert_ms"]),
            ("centre ack (node press -> ack journaled on the hub)", acks, TARGETS["ack_ms"]),
        ]
    )
    tail = f"Alarms lost: {lost}. Hub peak RSS: {result['hub_peak_rss_mb']} MB."
    command = (
        f"`python bench/ble_latency.py --alarms {args.alarms} --interval {args.interval} --strangers {args.strangers}`"
    )
    print(f"\nMachine: {machine()}\n\n{table}\n\n{tail}")
    if args.record:
        record("BLE alarm latency (bench/ble_latency.py)", f"{command}\n\n{table}\n\n{tail}\n")
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0 if result["ok"] and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
