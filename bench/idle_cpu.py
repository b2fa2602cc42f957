"""Idle CPU of a quiet hub: the real `anju run` process of a typical household, doing nothing but
being ready, over a window of `--seconds` (default 60). Target: under 1 % of one core (no busy
polling), so a Raspberry Pi stays cool and a UPS lasts.

The household of bench/household.py (GPIO pull-cord and UPS line on simulated pins, a BTHome
pendant and pull-cord node through the fake bluetoothd, a Zigbee smoke alarm on a virtual CC2652,
a private mosquitto and the reference centre), the hub at its field timings: MQTT heartbeat every
60 s, keepalive 30 s, Zigbee coordinator ping every 30 s, device heartbeats every 300 s (the
window may hold none of those; that is the quiet hub). After READY=1, online and `--settle`
seconds, it reads /proc/PID/stat (utime + stime of every thread of the hub) before and after the
window and prints the CPU used as a percentage of one core; and the voluntary context switches
summed over /proc/PID/task/*/status, per second: how often the hub's threads go to sleep and are
woken (a busy-polling loop shows as hundreds or thousands a second). Threads that end inside the
window take their switches with them, so that count is a lower bound. Only the hub process is
measured, not the broker, the centre or the simulated devices.

    python bench/idle_cpu.py [--seconds 60] [--settle 10] [--no-ble] [--no-zigbee] [--record]

To see what a busy hub does meanwhile: `py-spy dump --pid PID` or `py-spy top --pid PID` (the
script prints the PID; py-spy is not a dependency: `pip install py-spy` into the venv).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, record, summary_row
from household import HouseholdHub, context_switches, cpu_seconds, household_scenario

TARGET_PERCENT = 1.0


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    runner = HouseholdHub(household_scenario(ble=args.ble, zigbee=args.zigbee), workdir)
    try:
        await runner.start()
        await runner.wait_online(0)
        pid = runner.hub_pid
        print(f"hub ready (PID {pid}); settling {args.settle:g} s, then measuring {args.seconds:g} s ...", flush=True)
        await asyncio.sleep(args.settle)
        messages = Counter(runner.tap.counts)
        cpu0, (vol0, invol0, _), t0 = cpu_seconds(pid), context_switches(pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu1, (vol1, invol1, threads), t1 = cpu_seconds(pid), context_switches(pid), time.monotonic()
        messages = Counter(runner.tap.counts) - messages
    finally:
        await runner.stop()
    elapsed = t1 - t0
    return {
        "elapsed_s": elapsed,
        "cpu_s": cpu1 - cpu0,
        "percent": 100 * (cpu1 - cpu0) / elapsed,
        "wakeups_per_s": (vol1 - vol0) / elapsed,
        "preempted_per_s": (invol1 - invol0) / elapsed,
        "threads": threads,
        "messages": sum(messages.values()),
        "heartbeats": messages.get("heartbeat", 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window (default: %(default)s)")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after online before measuring (default: %(default)s)"
    )
    parser.add_argument("--no-ble", dest="ble", action="store_false", help="no BLE devices (no fake bluetoothd)")
    parser.add_argument("--no-zigbee", dest="zigbee", action="store_false", help="no Zigbee device (no virtual ZNP)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    radios = ", ".join(["GPIO"] + (["BLE"] if args.ble else []) + (["Zigbee"] if args.zigbee else []))
    print(f"a quiet household hub ({radios}) ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="anju-idle-bench-") as tmp:
        r = asyncio.run(measure(args, Path(tmp)))
    meets = r["percent"] < TARGET_PERCENT
    verdict = "meets" if meets else "MISSES"
    table = "\n".join(
        [
            "| measure | value | target |",
            "|---|---|---|",
            f"| CPU of one core, hub process (all {r['threads']:.0f} threads) | {r['percent']:.2f} % "
            f"({r['cpu_s']:.2f} s in {r['elapsed_s']:.0f} s) | < {TARGET_PERCENT:g} %: {verdict} |",
            f"| wakeups (voluntary context switches, all threads) | {r['wakeups_per_s']:.1f}/s | |",
            f"| preempted (involuntary context switches) | {r['preempted_per_s']:.1f}/s | |",
            f"| MQTT messages on the broker meanwhile (hub's and centre's) | {r['messages']:.0f}"
            f" ({r['heartbeats']:.0f} heartbeats) | |",
        ]
    )
    flags = ("" if args.ble else " --no-ble") + ("" if args.zigbee else " --no-zigbee")
    command = f"`python bench/idle_cpu.py --seconds {args.seconds:g} --settle {args.settle:g}{flags}`"
    note = (
        f"The real `anju run` process, household: {radios} (5 devices), field timings (MQTT heartbeat 60 s,"
        " keepalive 30 s, Zigbee ping 30 s, device heartbeats 300 s); /proc/PID/stat utime + stime before and"
        " after the window. CPU time is counted in clock ticks (1/100 s), so a short window is coarse."
    )
    print(f"\nMachine: {machine()}\n\n{table}")
    if args.record:
        summary = [
            summary_row(
                "idle CPU of a quiet hub", f"{r['percent']:.2f} % of one core", f"< {TARGET_PERCENT:g} %", meets
            ),
            summary_row("idle wakeups of a quiet hub", f"{r['wakeups_per_s']:.1f}/s"),
        ]
        record("Idle CPU (bench/idle_cpu.py)", f"{command}\n\n{table}\n\n{note}\n", summary)
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
