"""BLE ingest: adverts per second the hub's BLE stack takes in through BlueZ's D-Bus interface.

This process runs the fake bluetoothd (simulator.ble) and sends, at a target rate, adverts from
500 strangers and 10 household devices (encrypted BTHome presses, a new packet id and counter
each round). A second process runs the hub's own BLE stack, unmodified: bleak's BlueZ backend,
edge.ble.BleRadio and edge.bthome.BthomeInterpreter, and records every event it makes. Printed:
offered and ingested adverts/s, household events sent and received (none may be lost), and the
latency from the advert leaving the fake bluetoothd to the hub's event (p50/p99/max).

    python bench/ble_ingest.py [--rate 4000] [--seconds 10] [--strangers 500] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, record

HOUSEHOLD = 10
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
TARGETS = {"rate": 2000.0, "p99_ms": 10.0}


def household_macs() -> list[str]:
    return [f"A4:C1:38:BE:00:{i:02X}" for i in range(HOUSEHOLD)]


async def listen(out: Path) -> None:
    """The hub side: bleak + BleRadio + BthomeInterpreter, recording (mac, counter, event ns)."""
    from edge.ble import BleRadio
    from edge.bthome import BthomeInterpreter
    from hub.config import BleConfig
    from hub.model import Device, DeviceKind, Event, Origin, Transport

    devices = [
        Device(f"pendant-{i}", DeviceKind.PENDANT, Transport.BLE, mac=mac, key=KEY.hex())
        for i, mac in enumerate(household_macs())
    ]
    origin = Origin("hub-bench", "hh-bench", "bench")
    events: list[tuple[str, int | None, int]] = []

    def got(batch: list[Event]) -> None:
        events.extend((e.device_id or "", e.device_counter, e.observed_mono_ns) for e in batch)

    radio = BleRadio(
        BleConfig(adapter_reset="none", silence_restart_s=3600),
        BthomeInterpreter(origin, devices),
        got,
        lambda working, reason: None,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(radio.run())
    print("listening", flush=True)
    await stop.wait()
    task.cancel()
    await asyncio.to_thread(out.write_text, json.dumps({"adverts": radio.adverts, "events": events}))


async def send(args: argparse.Namespace, workdir: Path) -> dict[str, float | int]:
    from simulator.ble import FakeBluez
    from simulator.bthome import VirtualBthomeDevice, battery, packet_id, service_data

    async with FakeBluez(workdir, passive=True) as bluez:
        out = workdir / "listener.json"
        listener = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--listen",
            str(out),
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bluez.address},
            stdout=asyncio.subprocess.PIPE,
        )
        assert listener.stdout is not None
        await listener.stdout.readline()
        await bluez.wait_scanning(timeout=10)
        macs = household_macs()
        household = [VirtualBthomeDevice(mac, KEY) for mac in macs]
        strangers = [":".join(f"{random.randrange(256):02X}" for _ in range(6)) for _ in range(args.strangers)]
        per_round = len(household) + len(strangers)
        rounds = max(1, int(args.rate * args.seconds / per_round))
        interval = per_round / args.rate
        sent: dict[tuple[str, int], int] = {}
        started = time.monotonic()
        for n in range(rounds):
            stranger_data = service_data([packet_id(n % 256), battery(50 + n % 50)], mac="00:00:00:00:00:00")
            crowd = [(mac, {"fcd2": stranger_data}, -80 - n % 10) for mac in strangers]
            random.shuffle(crowd)
            chunk = max(1, len(crowd) // len(household))
            # Household adverts go out one by one between chunks of strangers, each timestamped as it
            # leaves, so the latency measured is the hub's, behind whatever crowd is queued.
            for i, (mac, device) in enumerate(zip(macs, household, strict=True)):
                await bluez.advertise_many(crowd[i * chunk : (i + 1) * chunk])
                counter = device.counter
                data = device.press()
                sent[(mac, counter)] = time.monotonic_ns()
                await bluez.advertise(mac, {"fcd2": data}, rssi=-55)
            await bluez.advertise_many(crowd[len(household) * chunk :])
            delay = started + (n + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        offered_s = time.monotonic() - started
        await asyncio.sleep(1.0)  # let the listener drain
        listener.send_signal(signal.SIGTERM)
        await listener.wait()
        result = json.loads(out.read_text())
    by_device = {f"pendant-{i}": mac for i, mac in enumerate(macs)}
    latencies = [
        (ns - sent[(by_device[device], counter)]) / 1e6
        for device, counter, ns in result["events"]
        if (by_device.get(device), counter) in sent
    ]
    return {
        "offered": rounds * per_round,
        "offered_rate": rounds * per_round / offered_s,
        "ingested": result["adverts"],
        "ingested_rate": result["adverts"] / offered_s,
        "household_sent": len(sent),
        "household_events": len(latencies),
        "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "max_ms": max(latencies) if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=4000, help="adverts per second offered (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10, help="how long to offer them (default: %(default)s)")
    parser.add_argument("--strangers", type=int, default=500, help="unknown devices (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    parser.add_argument("--listen", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        asyncio.run(listen(args.listen))
        return 0
    print(
        f"offering {args.rate:g} adverts/s for {args.seconds:g} s: {args.strangers} strangers and"
        f" {HOUSEHOLD} household pendants, through a fake bluetoothd ...",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="anju-ble-bench-") as tmp:
        r = asyncio.run(send(args, Path(tmp)))
    lost = int(r["household_sent"]) - int(r["household_events"])
    rate_ok = r["ingested_rate"] >= TARGETS["rate"] and r["ingested"] >= 0.99 * r["offered"]
    table = "\n".join(
        [
            "| measure | value | target |",
            "|---|---|---|",
            f"| adverts offered | {r['offered']} ({r['offered_rate']:.0f}/s) | |",
            f"| adverts ingested by the hub | {r['ingested']} ({r['ingested_rate']:.0f}/s) "
            f"| >= {TARGETS['rate']:g}/s: {'meets' if rate_ok else 'MISSES'} |",
            f"| household events | {r['household_events']} of {r['household_sent']} (lost: {lost}) "
            f"| none lost: {'meets' if lost == 0 else 'MISSES'} |",
            f"| advert -> event latency p50 / p99 / max | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['max_ms']:.2f} ms "
            f"| p99 <= {TARGETS['p99_ms']:g} ms: {'meets' if r['p99_ms'] <= TARGETS['p99_ms'] else 'MISSES'} |",
        ]
    )
    command = (
        f"`python bench/ble_ingest.py --rate {args.rate:g} --seconds {args.seconds:g} --strangers {args.strangers}`"
    )
    print(f"\nMachine: {machine()}\n\n{table}")
    if args.record:
        record("BLE ingest (bench/ble_ingest.py)", f"{command}\n\n{table}\n")
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
