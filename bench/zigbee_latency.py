"""Zigbee alarms: from a virtual device's frame hitting the pseudo-terminal to the local siren.

Plays a generated scenario (the runner of `anju simulate`: a virtual CC2652 speaking MT frames
on a pty, the hub with zigpy-znp as a separate process, a private mosquitto and the centre) with
N SOS presses spread over several buttons, and prints p50/p99/max of `local_alert_ms` and
`ack_ms`. Then it times the coordinator start-up on a formed network: zigpy-znp's
ControllerApplication, configured as the hub configures it, against the same virtual dongle.

    python bench/zigbee_latency.py [--alarms 200] [--interval 0.1] [--startups 5] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, record

from simulator.runner import run_scenario
from simulator.scenario import Scenario

TARGETS = {"local_alert_ms": 20.0, "startup_s": 5.0}
BUTTONS = 10


def scenario(alarms: int, interval: float) -> Scenario:
    devices = [
        {"id": f"sos-{i}", "kind": "sos", "transport": "zigbee", "ieee": f"00:0d:6f:00:0b:00:00:{i:02x}"}
        for i in range(BUTTONS)
    ]
    steps = [{"at": 0.5 + i * interval, "device": f"sos-{i % BUTTONS}", "do": "press"} for i in range(alarms)]
    return Scenario.model_validate(
        {
            "name": f"bench-zigbee-{alarms}",
            "household": {"id": "hh-zbench", "county": "bench"},
            "devices": devices,
            "steps": steps,
            "expect": [{"event": "alarm.emergency", "count": alarms, "delivered": True}],
            "zigbee": {"heartbeat_s": 30},
            "settle": 60,
        }
    )


async def startups(count: int) -> list[float]:
    from zigpy_znp.zigbee.application import ControllerApplication

    from edge.zigbee import ZigbeeRadio
    from hub.config import ZigbeeConfig
    from hub.model import Origin
    from simulator.znp import VirtualZnp

    times = []
    with tempfile.TemporaryDirectory(prefix="anju-zb-bench-") as tmp:
        async with VirtualZnp(Path(tmp) / "znp") as dongle:
            radio = ZigbeeRadio(
                ZigbeeConfig(port=str(dongle.port_path)),
                Origin("h", "hh", "c"),
                [],
                Path(tmp),
                lambda events: None,
                lambda ok, why: None,
            )
            config = radio._zigpy_config()
            app = await ControllerApplication.new(config, auto_form=True)  # forms the network once
            await app.shutdown()
            for _ in range(count):
                started = time.monotonic()
                app = await ControllerApplication.new(config, auto_form=True)
                times.append(time.monotonic() - started)
                await app.shutdown()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alarms", type=int, default=200, help="SOS presses (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between presses (default: %(default)s)")
    parser.add_argument("--startups", type=int, default=5, help="formed-network start-ups to time (default: 5)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    print(
        f"{args.alarms} Zigbee SOS presses through a virtual CC2652, the hub, mosquitto and the centre ...", flush=True
    )
    result = asyncio.run(run_scenario(scenario(args.alarms, args.interval)))
    events = [e for e in result["events"] if e["type"] == "alarm.emergency"]
    local = [e["local_alert_ms"] for e in events if e["local_alert_ms"] is not None]
    acks = [e["ack_ms"] for e in events if e["ack_ms"] is not None]
    lost = args.alarms - sum(1 for e in events if e["delivered"])
    print(f"timing {args.startups} coordinator start-ups on a formed network ...", flush=True)
    boots = asyncio.run(startups(args.startups))
    if not local or not acks:
        print("no measurements: the run failed", result["expectations"], file=sys.stderr)
        return 1
    p99 = percentile(local, 99)
    table = "\n".join(
        [
            "| measure | n | p50 | p99 | max | target |",
            "|---|---|---|---|---|---|",
            f"| frame on the pty -> siren output on | {len(local)} | {percentile(local, 50):.2f} ms | {p99:.2f} ms "
            f"| {max(local):.2f} ms | p99 <= {TARGETS['local_alert_ms']:g} ms: "
            f"{'meets' if p99 <= TARGETS['local_alert_ms'] else 'MISSES'} |",
            f"| frame on the pty -> centre's ack on the hub | {len(acks)} | {percentile(acks, 50):.2f} ms "
            f"| {percentile(acks, 99):.2f} ms | {max(acks):.2f} ms | |",
            f"| coordinator start-up, formed network | {len(boots)} | {percentile(boots, 50):.2f} s "
            f"| {percentile(boots, 99):.2f} s | {max(boots):.2f} s | <= {TARGETS['startup_s']:g} s: "
            f"{'meets' if max(boots) <= TARGETS['startup_s'] else 'MISSES'} |",
        ]
    )
    body = (
        f"`python bench/zigbee_latency.py --alarms {args.alarms} --interval {args.interval}`\n\n{table}\n\n"
        f"Alarms lost: {lost}.\n"
    )
    print(f"\nMachine: {machine()}\n\n{table}\n\nAlarms lost: {lost}.")
    if args.record:
        record("Zigbee latency (bench/zigbee_latency.py)", body)
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0 if result["ok"] and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
