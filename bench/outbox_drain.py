"""Outbox drain: a backlog of queued events after an outage, sent to a real mosquitto and the
reference centre (a separate process), and a new alarm raised in the middle of it.

The hub side is the hub's own code: the journal (SQLite, WAL, synchronous=FULL), the outbox and
the MQTT uplink, with the service's ack path (outbox.ack, then journal.mark_acked). Printed:
events acknowledged per second over the whole drain, and the time from a new alarm being queued
(two seconds into the drain) to its ack on the hub.

    python bench/outbox_drain.py [--events 100000] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, record

from cloud_bridge.mqtt import MqttUplink
from cloud_bridge.outbox import Outbox, RetryPolicy
from hub.config import MqttConfig
from hub.journal import AsyncJournal, Journal
from hub.model import Event, EventType
from simulator.broker import PrivateBroker

TARGETS = {"rate": 2000.0, "alarm_ms": 200.0}
HUB, COUNTY = "hub-drain", "bench"


def fill_journal(path: Path, count: int) -> None:
    """The backlog: `count` info events journaled while the link was down."""
    journal = Journal(path)
    journal._db.execute("PRAGMA synchronous=NORMAL")  # setup only: the drain runs with FULL again
    journal._db.execute("BEGIN")
    for _ in range(count):
        journal.append(Event(EventType.TEST_CALL, HUB, "hh-drain", COUNTY, None))
    journal._db.execute("COMMIT")
    journal.close()


async def drain(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    print(f"journaling a backlog of {args.events} events ...", flush=True)
    await asyncio.to_thread(fill_journal, workdir / "journal.sqlite3", args.events)
    with PrivateBroker(workdir / "broker") as broker:
        centre = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.cli",
            "centre",
            "--port",
            str(broker.port),
            "--db",
            str(workdir / "centre.sqlite3"),
            "--log-level",
            "WARNING",
        )
        journal = AsyncJournal(workdir / "journal.sqlite3")
        outbox = Outbox(RetryPolicy(first_s=30.0, cap_s=60.0))
        outbox.extend(await journal.unacknowledged())
        acked = 0
        alarm_id: str | None = None
        alarm_acked = asyncio.Event()
        done = asyncio.Event()
        journaling: set[asyncio.Task[Any]] = set()

        async def on_ack(event_id: str, body: dict[str, Any]) -> None:
            nonlocal acked
            event = outbox.ack(event_id)
            if event is None:
                return
            acked += 1  # journaled in the background, group-committed, as the service does
            journaling.add(asyncio.create_task(journal.mark_acked(event_id, "mqtt")))
            if event_id == alarm_id:
                alarm_acked.set()
            if len(outbox) == 0:
                done.set()

        async def on_command(body: dict[str, Any]) -> None: ...

        await asyncio.sleep(1.5)  # the centre subscribes
        config = MqttConfig(host=broker.host, port=broker.port, heartbeat_s=30)
        uplink = MqttUplink(config, HUB, COUNTY, outbox, on_ack, on_command)
        print("the link is back: draining ...", flush=True)
        started = time.monotonic()
        task = asyncio.create_task(uplink.run())
        await asyncio.sleep(2.0)
        alarm = await journal.append(Event(EventType.ALARM_EMERGENCY, HUB, "hh-drain", COUNTY, "cord"))
        alarm_id = alarm.event_id
        raised = time.monotonic()
        outbox.add(alarm)
        await asyncio.wait_for(alarm_acked.wait(), 60)
        alarm_ms = (time.monotonic() - raised) * 1000
        print(f"new alarm acknowledged {alarm_ms:.1f} ms after it was raised; {acked} acked so far", flush=True)
        await asyncio.wait_for(done.wait(), 600)
        await asyncio.gather(*journaling)  # the drain counts until every ack is on disk
        elapsed = time.monotonic() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        journal.close()
        centre.terminate()
        await centre.wait()
    return {"events": args.events + 1, "elapsed_s": elapsed, "rate": (args.events + 1) / elapsed, "alarm_ms": alarm_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="backlog size (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anju-drain-") as tmp:
        r = asyncio.run(drain(args, Path(tmp)))
    table = "\n".join(
        [
            "| measure | value | target |",
            "|---|---|---|",
            f"| backlog drained and acknowledged | {r['events']:.0f} events in {r['elapsed_s']:.1f} s = "
            f"{r['rate']:,.0f} events/s | >= {TARGETS['rate']:,.0f}/s: "
            f"{'meets' if r['rate'] >= TARGETS['rate'] else 'MISSES'} |",
            f"| a new alarm raised during the drain, raised -> acked | {r['alarm_ms']:.1f} ms "
            f"| <= {TARGETS['alarm_ms']:g} ms: {'meets' if r['alarm_ms'] <= TARGETS['alarm_ms'] else 'MISSES'} |",
        ]
    )
    print(f"\nMachine: {machine()}\n\n{table}")
    if args.record:
        record(
            "Outbox drain (bench/outbox_drain.py)",
            f"`python bench/outbox_drain.py --events {args.events}`\n\n"
            f"{table}\n\nThe centre is a separate process storing every event with synchronous=FULL; the hub "
            "journals every ack the same way.\n",
        )
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
