"""Hub start-up time and memory: the real `anju run` process of a typical household, started N times.

The household of bench/household.py (GPIO pull-cord and UPS line on simulated pins, a BTHome
pendant and pull-cord node through the fake bluetoothd, a Zigbee smoke alarm on a virtual CC2652,
a private mosquitto and the reference centre), the hub at its field timings. After a first start
(which also joins and enrols the Zigbee device), the hub is stopped with SIGTERM and started again
N times; each time:

  - exec -> READY=1: from spawning `python -m hub.cli run --config hub.toml` until the hub's
    sd_notify READY=1 arrives on the runner's NOTIFY_SOCKET (inputs, siren and prompts are live,
    the journal is open: a pull-cord works from here on);
  - exec -> online: until the contract tap (an MQTT client on the broker) receives the hub's
    retained `online` status, i.e. its MQTT session to the county broker is up;
  - RSS after settling `--settle` seconds: VmRSS and VmHWM (peak) of the hub from /proc/PID/status.

Prints p50 and max of each (nearest rank). The files are in the page cache after the first start,
so these are warm starts, as after a service restart; a cold boot on an SD card is slower.
`--record` writes them into docs/BENCHMARKS.md.

    python bench/startup.py [--starts 5] [--settle 5] [--no-ble] [--no-zigbee] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, record, summary_row
from household import HouseholdHub, household_scenario, memory_mb

TARGETS = {"rss_mb": 120.0}  # bench/alarm_latency.py's; the issue sets none for start-up time


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    runner = HouseholdHub(household_scenario(ble=args.ble, zigbee=args.zigbee), workdir)
    out: dict[str, list[float]] = {"ready_s": [], "online_s": [], "rss_mb": [], "hwm_mb": []}
    try:
        await runner.start()
        await runner.wait_online(0)
        for n in range(args.starts):
            since = time.monotonic_ns()
            ready = await runner.restart_hub()
            online = await runner.wait_online(since)
            await asyncio.sleep(args.settle)
            rss, hwm = memory_mb(runner.hub_pid)
            print(
                f"  start {n + 1}: READY=1 after {ready:.2f} s, online after {online:.2f} s;"
                f" after {args.settle:g} s RSS {rss:.1f} MB, peak {hwm:.1f} MB",
                flush=True,
            )
            for key, value in zip(out, (ready, online, rss, hwm), strict=True):
                out[key].append(value)
    finally:
        await runner.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="timed starts (default: %(default)s)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds after online before reading RSS (default: %(default)s)"
    )
    parser.add_argument("--no-ble", dest="ble", action="store_false", help="no BLE devices (no fake bluetoothd)")
    parser.add_argument("--no-zigbee", dest="zigbee", action="store_false", help="no Zigbee device (no virtual ZNP)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    radios = ", ".join(["GPIO"] + (["BLE"] if args.ble else []) + (["Zigbee"] if args.zigbee else []))
    print(f"starting the hub of a household ({radios}) {args.starts} times ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="anju-startup-bench-") as tmp:
        r = asyncio.run(measure(args, Path(tmp)))

    def row(name: str, key: str, unit: str, target: float | None) -> tuple[str, dict[str, object]]:
        values = r[key]
        p50, worst = percentile(values, 50), max(values)
        cell = f"{p50:.2f} / {worst:.2f} {unit}" if unit == "s" else f"{p50:.1f} / {worst:.1f} {unit}"
        if target is None:
            return f"| {name} | {cell} | |", summary_row(f"hub {name}", f"p50 / max {cell}")
        meets = worst <= target
        line = f"| {name} | {cell} | max <= {target:g} {unit}: {'meets' if meets else 'MISSES'} |"
        return line, summary_row(f"hub {name}", f"p50 / max {cell}", f"<= {target:g} {unit}", meets)

    rows = [
        row("exec -> READY=1 (alarms work)", "ready_s", "s", None),
        row("exec -> online at the broker", "online_s", "s", None),
        row(f"RSS {args.settle:g} s after online (VmRSS)", "rss_mb", "MB", TARGETS["rss_mb"]),
        row("peak RSS (VmHWM)", "hwm_mb", "MB", TARGETS["rss_mb"]),
    ]
    table = "\n".join([f"| measure (n = {args.starts}) | p50 / max | target |", "|---|---|---|"] + [x[0] for x in rows])
    flags = ("" if args.ble else " --no-ble") + ("" if args.zigbee else " --no-zigbee")
    command = f"`python bench/startup.py --starts {args.starts} --settle {args.settle:g}{flags}`"
    note = (
        f"The real `anju run` process, household: {radios} (5 devices), private mosquitto and centre; field timings."
        " Warm starts (SIGTERM, start again: the files are in the page cache); READY=1 is the hub's sd_notify,"
        " online is its retained `online` status as a subscriber on the broker receives it."
    )
    body = f"{command}\n\n{table}\n\n{note}\n"
    print(f"\nMachine: {machine()}\n\n{table}")
    if args.record:
        record("Start-up and memory (bench/startup.py)", body, [x[1] for x in rows])
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
