"""Bytes the hub writes to disk in a typical day. Target: under 50 MB a day (an SD card lasts years).

A typical day of a household (bench/household.py: a bathroom pull-cord and the UPS's mains-lost
line on GPIO, a BTHome pendant and a BTHome pull-cord node on BLE, a Zigbee smoke alarm):

  - the hub's MQTT heartbeat every 60 s (1,440 a day), its keepalive every 30 s;
  - each BLE node's heartbeat advert every 300 s, the smoke alarm's check-in every 300 s (864 a day);
  - 20 info/fault events (modelled as the UPS line's fault.power / restore.power, 10 of each:
    each journaled, sent, acknowledged);
  - 2 alarms (the bathroom cord pulled: siren, voice prompts, alarm.emergency journaled, sent,
    acknowledged, the ack journaled).

Everything is measured on the real `anju run` process: /proc/PID/io `write_bytes` (what the hub
makes the block layer write: page-granular, counted when a page is dirtied, fsync'd or not), and
besides, for the picture, the growth of the hub's data directory (journal, WAL, Zigbee database)
and of its log (its stdout, a file here; under systemd journald writes it instead). If the kernel
or the container reports no write_bytes at all, `wchar` (bytes passed to write()) is used, and
the output says so. A day is assembled from three measured parts:

 1. quiet: the hub at field timings for `--seconds`, from `--settle` seconds after it came
    online: bytes/s x 86,400 (whatever the hub writes with time alone, plus any heartbeat or
    check-in that fell in the window). The settling matters: a start is followed by one-off
    writes (zigpy's database and zigbee-devices.json, ~12 kB within ~30 s of the Zigbee join)
    that would otherwise be scaled up as if they happened every minute;
 2. periodic traffic, time-compressed: a second hub with every periodic thing `--speedup` K times
    as often (heartbeat 60/K s, device adverts and check-ins 300/K s) for `--seconds`: its bytes/s
    above the quiet rate is K days' worth of that traffic a day, so x 86,400 / K;
 3. events: in the quiet hub, `--alarms` pull-cord alarms and `--infos` UPS events, each set
    until acknowledged: bytes above the quiet rate meanwhile, per event, x 2 alarms and x 20 infos.

It assumes bytes grow with the count of operations (not with the speed-up), and that SQLite's
WAL checkpoints (every 1,000 pages by default) are rare enough in a day to be covered by the
per-event bytes (the WAL pages a checkpoint copies back were already counted once when written).

    python bench/disk_writes.py [--seconds 120] [--settle 40] [--speedup 60] [--alarms 4] [--infos 10] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, record, summary_row
from household import FIELD_HEARTBEAT_S, HouseholdHub, household_scenario, proc_io, tree_bytes

from simulator.scenario import Step

TARGET_MB_PER_DAY = 50.0
DAY_S = 86_400
HEARTBEAT_S = 60.0
ALARMS_PER_DAY, INFOS_PER_DAY = 2, 20
MB = 1_000_000


class Meter:
    """Bytes the hub process wrote, its data directory's and its log's growth, since the last read."""

    def __init__(self, runner: HouseholdHub) -> None:
        self.runner = runner
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        self.runner.check_alive()
        io = proc_io(self.runner.hub_pid)
        return {
            "write_bytes": io["write_bytes"],
            "wchar": io["wchar"],
            "data": tree_bytes(self.runner.hub_data),
            "log": self.runner.hub_log.stat().st_size,
            "t": time.monotonic(),
        }

    def take(self) -> dict[str, float]:
        now = self._now()
        delta = {key: now[key] - self.last[key] for key in now}
        self.last = now
        return delta


async def quiet_and_events(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    runner = HouseholdHub(household_scenario(), workdir)
    out = {}
    try:
        await runner.start()
        await runner.wait_online(0)
        await asyncio.sleep(args.settle)
        meter = Meter(runner)
        print(f"  quiet hub, field timings: {args.seconds:g} s ...", flush=True)
        await asyncio.sleep(args.seconds)
        out["quiet"] = meter.take()
        print(f"  {args.alarms} pull-cord alarms, until acknowledged ...", flush=True)
        for _ in range(args.alarms):
            await runner.play(Step(at=0, device="cord-bath", do="pull", hold=0.3))
            await asyncio.sleep(1.0)
        await runner.wait_acked()
        out["alarms"] = meter.take()
        print(f"  {args.infos} UPS events (mains lost / back), until acknowledged ...", flush=True)
        for n in range(args.infos):
            await runner.play(Step(at=0, device="ups", do="mains_back" if n % 2 else "mains_lost"))
            await asyncio.sleep(0.5)
        await runner.wait_acked()
        out["infos"] = meter.take()
    finally:
        await runner.stop()
    return out


async def periodic(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    scenario = household_scenario(device_heartbeat_s=FIELD_HEARTBEAT_S / args.speedup)
    runner = HouseholdHub(scenario, workdir, mqtt={"heartbeat_s": HEARTBEAT_S / args.speedup})
    try:
        await runner.start()
        await runner.wait_online(0)
        await asyncio.sleep(args.settle)
        meter = Meter(runner)
        heartbeats = runner.tap.counts["heartbeat"]
        print(f"  periodic traffic x{args.speedup:g}: {args.seconds:g} s ...", flush=True)
        await asyncio.sleep(args.seconds)
        result = meter.take()
        result["heartbeats"] = runner.tap.counts["heartbeat"] - heartbeats
    finally:
        await runner.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="each timed window (default: %(default)s)")
    parser.add_argument("--speedup", type=float, default=60.0, help="periodic traffic K times faster (default: 60)")
    parser.add_argument("--alarms", type=int, default=4, help="pull-cord alarms measured (default: %(default)s)")
    parser.add_argument("--infos", type=int, default=10, help="UPS events measured (default: %(default)s)")
    parser.add_argument(
        "--settle",
        type=float,
        default=40.0,
        help="seconds after online before measuring: the one-off writes after a start (zigpy's database"
        " after the Zigbee device joined, ~10-30 s) must not be scaled up to a day (default: %(default)s)",
    )
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    print("bytes the hub writes in a day of typical traffic ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="anju-disk-bench-") as tmp:
        parts = asyncio.run(quiet_and_events(args, Path(tmp) / "quiet"))
        parts["periodic"] = asyncio.run(periodic(args, Path(tmp) / "fast"))
    measured = sum(part["write_bytes"] for part in parts.values())
    key = "write_bytes" if measured > 0 else "wchar"
    source = (
        "/proc/PID/io write_bytes"
        if key == "write_bytes"
        else "/proc/PID/io wchar (write_bytes was 0 throughout: not reported here)"
    )

    def day(what: str) -> dict[str, float]:
        """Bytes a day from each part, for `what` (key, data or log)."""
        quiet = parts["quiet"]
        rate = quiet[what] / quiet["t"]

        def above(part: dict[str, float]) -> float:
            return max(0.0, part[what] - rate * part["t"])

        fast = parts["periodic"]
        return {
            "quiet": rate * DAY_S,
            "periodic": max(0.0, fast[what] / fast["t"] - rate) * DAY_S / args.speedup,
            "alarms": above(parts["alarms"]) / args.alarms * ALARMS_PER_DAY,
            "infos": above(parts["infos"]) / args.infos * INFOS_PER_DAY,
        }

    written, data, log = day(key), day("data"), day("log")
    total = sum(written.values()) / MB
    meets = total < TARGET_MB_PER_DAY
    per_alarm = max(0.0, parts["alarms"][key] - parts["quiet"][key] / parts["quiet"]["t"] * parts["alarms"]["t"])
    per_info = max(0.0, parts["infos"][key] - parts["quiet"][key] / parts["quiet"]["t"] * parts["infos"]["t"])
    rows = [
        ("time alone (quiet hub, field timings)", f"{parts['quiet']['t']:.0f} s measured", "quiet"),
        (
            f"periodic traffic: 1,440 heartbeats, 864 device adverts/check-ins (x{args.speedup:g} for"
            f" {parts['periodic']['t']:.0f} s: {parts['periodic']['heartbeats']:.0f} heartbeats)",
            "",
            "periodic",
        ),
        (f"{ALARMS_PER_DAY} alarms", f"{per_alarm / args.alarms / 1000:.1f} kB each (n = {args.alarms})", "alarms"),
        (
            f"{INFOS_PER_DAY} info/fault events",
            f"{per_info / args.infos / 1000:.1f} kB each (n = {args.infos})",
            "infos",
        ),
    ]
    lines = [
        f"| part of the day | measured | written ({key}) | data dir growth | log growth |",
        "|---|---|---|---|---|",
    ]
    for name, measured_text, part in rows:
        lines.append(
            f"| {name} | {measured_text} | {written[part] / MB:.2f} MB | {data[part] / MB:.2f} MB"
            f" | {log[part] / MB:.2f} MB |"
        )
    lines.append(
        f"| **a day** | | **{total:.2f} MB** | {sum(data.values()) / MB:.2f} MB | {sum(log.values()) / MB:.2f} MB |"
    )
    table = "\n".join(lines)
    verdict = (
        f"A day: {total:.2f} MB written (target < {TARGET_MB_PER_DAY:g} MB a day: {'meets' if meets else 'MISSES'});"
        f" from {source}."
    )
    command = (
        f"`python bench/disk_writes.py --seconds {args.seconds:g} --settle {args.settle:g} --speedup {args.speedup:g}"
        f" --alarms {args.alarms} --infos {args.infos}`"
    )
    note = (
        "Method (see the script's docstring): three measured parts of the real hub process, scaled to a day."
        " Data dir and log growth are apparent file sizes (the journal's WAL is reused after a checkpoint, so"
        " its growth can be 0 while pages are written); the written column is what counts for the SD card."
        " The simulated voice player appends a line per prompt to a file; aplay on a Pi writes nothing."
    )
    print(f"\nMachine: {machine()}\n\n{table}\n\n{verdict}")
    if args.record:
        summary = [
            summary_row(
                "disk writes, typical day", f"{total:.2f} MB/day ({key})", f"< {TARGET_MB_PER_DAY:g} MB/day", meets
            )
        ]
        record("Disk writes (bench/disk_writes.py)", f"{command}\n\n{table}\n\n{verdict}\n\n{note}\n", summary)
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
